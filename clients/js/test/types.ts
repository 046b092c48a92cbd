// Compiled (not run) by the "the types" test: the documented uses of
// wsrelay.d.ts type-check under --strict, in Node with the ws package and
// in a browser.

import WebSocket from "ws";
import { type At, type Joined, RelayClient } from "../wsrelay.js";

const node = new RelayClient("ws://127.0.0.1:8443/rooms/x", {
  WebSocket,
  rewind: 5,
  onMessage: (data: string | ArrayBuffer, at: At) => console.log(data, at.position, at.skipped),
});
node.send("hi");

const browser = new RelayClient(new URL("ws://127.0.0.1:8443/rooms/x"), {
  token: "t",
  rewind: "30s",
  onJoin: (j: Joined) => console.log(j.recovered),
  onReset: (at) => console.log(at.epoch, at.position),
});
browser.send(new Uint8Array([1]));
const position: number = browser.position;
console.log(position);
