// The server's /wshub.js is built from this package: dist/index.js (tsc's output of
// src/index.ts, which imports types only, so it is one dependency-free ES module) with a header
// and without the source-map comment, written to dist/wshub.js.
//
//   node scripts/browser-bundle.mjs          write dist/wshub.js
//   node scripts/browser-bundle.mjs --copy   ...and copy it to src/wshub/server/static/wshub.js
//   node scripts/browser-bundle.mjs --check  fail unless the server's copy is up to date
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const STATIC = resolve(root, "../../src/wshub/server/static/wshub.js");
const HEADER =
  "// Built from clients/js/src/index.ts (@wshub/client) by `npm run build` in clients/js:\n" +
  "// do not edit here; edit the TypeScript source and run `npm run build:static`.\n";

const compiled = readFileSync(resolve(root, "dist/index.js"), "utf8");
if (/^\s*import\s|\bfrom\s+["']/m.test(compiled.replace(/\/\*[\s\S]*?\*\//g, ""))) {
  throw new Error("dist/index.js imports something: /wshub.js must stay one module");
}
const bundle = HEADER + compiled.replace(/\n\/\/# sourceMappingURL=.*\n?$/, "\n");
writeFileSync(resolve(root, "dist/wshub.js"), bundle);

if (process.argv.includes("--copy")) {
  writeFileSync(STATIC, bundle);
  console.log(`wrote ${STATIC}`);
} else if (process.argv.includes("--check")) {
  let current = "";
  try {
    current = readFileSync(STATIC, "utf8");
  } catch {
    // missing: stale
  }
  if (current !== bundle) {
    console.error(
      `${STATIC} is not the build of clients/js/src/index.ts: run \`npm run build:static\` in clients/js`,
    );
    process.exit(1);
  }
  console.log("src/wshub/server/static/wshub.js is up to date");
}
