// A YAML file (an action's action.yml) as JSON on stdout, for tests/fidelity/actions.py:
// the `yaml` package comes with the TypeScript SDK's install (NODE_PATH), and the
// harness's own environment has no YAML parser.
'use strict';

const fs = require('node:fs');
const YAML = require('yaml');

process.stdout.write(JSON.stringify(YAML.parse(fs.readFileSync(process.argv[2], 'utf8'))));
