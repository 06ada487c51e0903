// Validates an AsyncAPI document (JSON on stdin) against the official AsyncAPI 3.0.0 JSON
// Schema shipped by @asyncapi/specs. Exit 0 when valid; prints every error and exits 1 if not.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const require = createRequire(import.meta.url);
const specs = require("@asyncapi/specs");
const doc = JSON.parse(readFileSync(0, "utf8"));
const version = doc.asyncapi;
const schema = specs.schemas[version];
if (!schema) {
  console.error(`no AsyncAPI schema for version ${JSON.stringify(version)}`);
  process.exit(1);
}
// The bundled schema embeds the draft-07 meta-schema itself, so Ajv must not add its own copy.
const ajv = new Ajv({ allErrors: true, strict: false, meta: false, validateSchema: false });
addFormats(ajv);
const validate = ajv.compile(schema);
if (validate(doc)) {
  console.log(`valid AsyncAPI ${version}`);
} else {
  for (const e of validate.errors) console.error(`${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
  process.exit(1);
}
