// The verdict of ajv 8 (draft 2020-12, with ajv-formats) on each body: JSON Lines in, JSON Lines out.
//
// Usage: node verdicts.mjs SCHEMA.json < bodies.jsonl
// Each input line is one body (any JSON value); each output line is
// {"valid": true} or {"valid": false, "errors": ["/path: message", ...]}, in the same order.
import { readFileSync } from "node:fs";
import Ajv2020Module from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

const Ajv2020 = Ajv2020Module.default ?? Ajv2020Module;
const addFormats = addFormatsModule.default ?? addFormatsModule;

const schema = JSON.parse(readFileSync(process.argv[2], "utf8"));
// Defaults, spelled out: strict mode, and patterns compiled with the `u` flag.
const ajv = new Ajv2020({ strict: true, unicodeRegExp: true, allErrors: false });
addFormats(ajv);
const validate = ajv.compile(schema);

const input = readFileSync(0, "utf8");
const out = [];
for (const line of input.split("\n")) {
  if (line === "") continue;
  const body = JSON.parse(line);
  if (validate(body)) {
    out.push(JSON.stringify({ valid: true }));
  } else {
    const errors = (validate.errors ?? []).slice(0, 3).map((e) => `${e.instancePath || "/"}: ${e.message}`);
    out.push(JSON.stringify({ valid: false, errors }));
  }
}
process.stdout.write(out.length ? out.join("\n") + "\n" : "");
