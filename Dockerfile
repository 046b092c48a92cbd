# wsrelay in a container: a release build, then a slim runtime as a non-root user.
#
#   docker build -t wsrelay .
#   docker run -p 8443:8443 -p 9090:9090 wsrelay
#   docker run -v $PWD/wsrelay.yaml:/etc/wsrelay/wsrelay.yaml wsrelay --config-file /etc/wsrelay/wsrelay.yaml

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# aws-lc-sys (the TLS crypto) builds C with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake=3.25.* \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin wsrelay

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --uid 10001 wsrelay
COPY --from=build /src/target/release/wsrelay /usr/local/bin/wsrelay
USER 10001
# WebSocket clients, then /metrics, /healthz and /readyz.
EXPOSE 8443 9090
# bash alone (no curl in the image): GET /healthz on the metrics port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsrelay"]
CMD ["serve"]
