// Parse an AsyncAPI document with the official parser; print its diagnostics as JSON lines
// (severity 0 = error, 1 = warning, 2 = information, 3 = hint) and exit 1 if any is an error.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Parser } from "@asyncapi/parser";

const file = resolve(process.argv[2]);
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"), { source: file });
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (document) {
  console.log(JSON.stringify({ channels: document.channels().all().map((c) => c.address()) }));
}
process.exit(errors.length === 0 && document ? 0 : 1);
