// Neon's TypeScript SDK (@neondatabase/api-client) through every call that applies to one
// project, run by node with the SDK's install on NODE_PATH (check.py installs it, pinned,
// outside this repository); imports nothing of the harness. Each answer is checked
// against the OpenAPI document the SDK ships (public-v2-for-users.gen.yaml): the schema
// of the route, method and status it came from. Prints one JSON line per call:
// {"call", "ok", "detail", "checked"} (checked: how many answers met their schema).
// The API's host, key and project come from NEON_API_HOST, NEON_API_KEY and
// NEON_PROJECT_ID, as `cathouse-branch emulator` prints them.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { createApiClient } = require('@neondatabase/api-client');
const Ajv = require('ajv');
const YAML = require('yaml');

const SPEC_FILE = path.join(
  path.dirname(require.resolve('@neondatabase/api-client/package.json')),
  'public-v2-for-users.gen.yaml',
);

// The document is OpenAPI 3.0 (`nullable`, `example`, `discriminator` among JSON Schema's
// keywords): ajv takes it with strict mode off; formats other than date-time are
// accepted as they come, since the SDK's own types do not check them either.
function schemaChecker() {
  const doc = YAML.parse(fs.readFileSync(SPEC_FILE, 'utf8'));
  const ajv = new Ajv({ strict: false, allErrors: false, validateSchema: false });
  const formats = new Set();
  (function collect(node) {
    if (node && typeof node === 'object') {
      if (typeof node.format === 'string') formats.add(node.format);
      Object.values(node).forEach(collect);
    }
  })(doc.components);
  const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i;
  for (const name of formats) ajv.addFormat(name, name === 'date-time' ? RFC3339 : true);
  ajv.addSchema({ components: doc.components }, 'neon');
  const routes = Object.entries(doc.paths).map(([template, ops]) => ({
    pattern: new RegExp('^' + template.replace(/\{[^}]+\}/g, '[^/]+') + '$'),
    literal: !template.includes('{'),
    ops,
  }));
  // a literal route (/projects/shared) before the template that would also take it
  routes.sort((a, b) => Number(b.literal) - Number(a.literal));
  const compiled = new Map();

  return function problems(method, route, status, body) {
    const found = routes.find((r) => r.pattern.test(route));
    const op = found && found.ops[method];
    if (!op) return `${method.toUpperCase()} ${route}: not in the SDK's document`;
    let answer = op.responses[String(status)] || op.responses.default;
    // a shared answer (`#/components/responses/…`) is named, not written out
    if (answer && answer.$ref) answer = answer.$ref.slice(2).split('/').reduce((node, key) => node[key], doc);
    const schema = answer && answer.content && answer.content['application/json'];
    if (!schema) return null; // an answer without a body (none of the calls above)
    const key = `${method} ${found.pattern} ${status}`;
    if (!compiled.has(key)) {
      // refs point into the document's components, registered above as `neon`
      const text = JSON.stringify(schema.schema).replace(/"#\/components\//g, '"neon#/components/');
      compiled.set(key, ajv.compile(JSON.parse(text)));
    }
    const validate = compiled.get(key);
    if (validate(body)) return '';
    const why = validate.errors.slice(0, 3).map((e) => `${e.instancePath || '/'} ${e.message}`);
    return `${method.toUpperCase()} ${route} ${status}: answer does not match the schema: ${why.join('; ')}`;
  };
}

async function main() {
  const base = process.env.NEON_API_HOST.replace(/\/+$/, '');
  const project = process.env.NEON_PROJECT_ID;
  const api = createApiClient({ apiKey: process.env.NEON_API_KEY, baseURL: base });
  const problems = schemaChecker();
  const basePath = new URL(base).pathname.replace(/\/+$/, '');
  let answers = [];
  const record = (response) => {
    const route = new URL(response.request.path, base).pathname.slice(basePath.length);
    answers.push({ method: response.config.method, route, status: response.status, body: response.data });
  };
  // error answers too: their body is the document's GeneralError
  api.instance.interceptors.response.use(
    (response) => { record(response); return response; },
    (err) => { if (err.response) record(err.response); return Promise.reject(err); },
  );
  let checked = 0;

  async function call(name, act) {
    answers = [];
    let result = null;
    let detail = '';
    try {
      result = (await act()).data;
    } catch (err) {
      const data = err.response && err.response.data;
      detail = err.response
        ? `HTTP ${err.response.status}: ${(data && data.message) || JSON.stringify(data)}`
        : `${err.name}: ${err.message}`;
    }
    for (const a of answers) {
      const why = problems(a.method, a.route, a.status, a.body);
      if (why) detail = detail || why;
      else if (why === '') checked += 1;
    }
    console.log(JSON.stringify({ call: name, ok: !detail, detail: detail.slice(0, 300), checked }));
    return detail ? null : result;
  }

  // Until the project's operations are done, as Neon's clients must wait (423).
  async function settle() {
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const { data } = await api.listProjectOperations({ projectId: project });
      const busy = data.operations.filter((op) => !['finished', 'failed', 'skipped', 'cancelled'].includes(op.status));
      if (busy.length === 0) return;
      await new Promise((done) => setTimeout(done, 100));
    }
    throw new Error('operations still running after 30 s');
  }

  await call('getAuthDetails', () => api.getAuthDetails());
  await call('getCurrentUserInfo', () => api.getCurrentUserInfo());
  await call('getCurrentUserOrganizations', () => api.getCurrentUserOrganizations());
  await call('getActiveRegions', () => api.getActiveRegions({}));
  await call('listApiKeys', () => api.listApiKeys());
  await call('listProjects', () => api.listProjects({}));
  await call('listSharedProjects', () => api.listSharedProjects({}));
  await call('getProject', () => api.getProject(project));
  await call('updateProject', () => api.updateProject(project, { project: { name: 'fidelity-ts' } }));
  await call('listProjectPermissions', () => api.listProjectPermissions(project));
  const listed = await call('listProjectBranches', () => api.listProjectBranches({ projectId: project }));
  await call('countProjectBranches', () => api.countProjectBranches({ projectId: project }));
  if (!listed) return;
  const main = listed.branches.find((b) => b.default || b.primary);
  await call('getProjectBranch', () => api.getProjectBranch(project, main.id));
  // the project's own database and its owner, whatever the emulator was configured with
  const { data: { databases: [own] } } = await api.listProjectBranchDatabases(project, main.id);
  // Features a new Neon project has none of: empty lists, as Neon answers them.
  await call('getAvailablePreloadLibraries', () => api.getAvailablePreloadLibraries(project));
  await call('getProjectJwks', () => api.getProjectJwks(project));
  await call('listProjectVpcEndpoints', () => api.listProjectVpcEndpoints(project));
  await call('listSnapshots', () => api.listSnapshots(project));
  await call('getMaskingRules', () => api.getMaskingRules(project, main.id));
  await call('getSnapshotSchedule', () => api.getSnapshotSchedule(project, main.id));
  // Features of a project the local server does not have (check.py lists them as
  // NOT_EMULATED, each with why): asked all the same, so a change on either side shows.
  await call('getProjectAdvisorSecurityIssues', () => api.getProjectAdvisorSecurityIssues({ projectId: project }));
  await call('getNeonAuth', () => api.getNeonAuth(project, main.id));
  await call('getProjectBranchDataApi', () => api.getProjectBranchDataApi(project, main.id, own.name));
  const made = await call('createProjectBranch', () => api.createProjectBranch(project, {
    branch: { name: 'fidelity-ts', parent_id: main.id }, endpoints: [{ type: 'read_write' }],
  }));
  await settle();
  if (!made) return;
  const branch = made.branch.id;
  const endpoint = made.endpoints[0].id;
  await call('updateProjectBranch', () => api.updateProjectBranch(project, branch, { branch: { name: 'fidelity-ts-2' } }));
  await call('getProjectBranchSchema', () => api.getProjectBranchSchema({
    projectId: project, branchId: branch, db_name: own.name,
  }));
  await call('getProjectBranchSchemaComparison', () => api.getProjectBranchSchemaComparison({
    projectId: project, branchId: branch, base_branch_id: main.id, db_name: own.name,
  }));
  await call('listProjectBranchEndpoints', () => api.listProjectBranchEndpoints(project, branch));
  await call('listProjectEndpoints', () => api.listProjectEndpoints(project));
  await call('getProjectEndpoint', () => api.getProjectEndpoint(project, endpoint));
  await call('updateProjectEndpoint', () => api.updateProjectEndpoint(project, endpoint, {
    endpoint: { suspend_timeout_seconds: 600 },
  }));
  await settle();
  await call('suspendProjectEndpoint', () => api.suspendProjectEndpoint(project, endpoint));
  await settle();
  await call('startProjectEndpoint', () => api.startProjectEndpoint(project, endpoint));
  await settle();
  await call('restartProjectEndpoint', () => api.restartProjectEndpoint(project, endpoint));
  await settle();
  const reader = await call('createProjectEndpoint', () => api.createProjectEndpoint(project, {
    endpoint: { branch_id: branch, type: 'read_only' },
  }));
  await settle();
  if (reader) {
    await call('deleteProjectEndpoint', () => api.deleteProjectEndpoint(project, reader.endpoint.id));
    await settle();
  }
  await call('listProjectBranchRoles', () => api.listProjectBranchRoles(project, branch));
  await call('createProjectBranchRole', () => api.createProjectBranchRole(project, branch, { role: { name: 'fidelity_ts' } }));
  await settle();
  await call('getProjectBranchRole', () => api.getProjectBranchRole(project, branch, 'fidelity_ts'));
  await call('getProjectBranchRolePassword', () => api.getProjectBranchRolePassword(project, branch, 'fidelity_ts'));
  await call('resetProjectBranchRolePassword', () => api.resetProjectBranchRolePassword(project, branch, 'fidelity_ts'));
  await settle();
  await call('listProjectBranchDatabases', () => api.listProjectBranchDatabases(project, branch));
  await call('createProjectBranchDatabase', () => api.createProjectBranchDatabase(project, branch, {
    database: { name: 'fidelity_ts_db', owner_name: 'fidelity_ts' },
  }));
  await settle();
  await call('getProjectBranchDatabase', () => api.getProjectBranchDatabase(project, branch, 'fidelity_ts_db'));
  await call('updateProjectBranchDatabase', () => api.updateProjectBranchDatabase(project, branch, 'fidelity_ts_db', {
    database: { name: 'fidelity_ts_db2' },
  }));
  await settle();
  await call('deleteProjectBranchDatabase', () => api.deleteProjectBranchDatabase(project, branch, 'fidelity_ts_db2'));
  await settle();
  await call('deleteProjectBranchRole', () => api.deleteProjectBranchRole(project, branch, 'fidelity_ts'));
  await settle();
  const names = { database_name: own.name, role_name: own.owner_name };
  await call('getConnectionUri', () => api.getConnectionUri({ projectId: project, ...names }));
  await call('getConnectionUri(pooled)', () => api.getConnectionUri({ projectId: project, pooled: true, ...names }));
  await call('getConnectionUri(branch)', () => api.getConnectionUri({
    projectId: project, branch_id: branch, endpoint_id: endpoint, ...names,
  }));
  await call('restoreProjectBranch', () => api.restoreProjectBranch(project, branch, { source_branch_id: main.id }));
  await settle();
  // Snapshots: take one of the branch, restore it into a new branch, finalize that onto the branch.
  let restoredId = null;
  const snap = await call('createSnapshot', () => api.createSnapshot({ projectId: project, branchId: branch, name: 'fidelity-ts-snap' }));
  await settle();
  await call('listSnapshots (one)', () => api.listSnapshots(project));
  if (snap) {
    const id = snap.snapshot.id;
    await call('updateSnapshot', () => api.updateSnapshot(project, id, { snapshot: { name: 'fidelity-ts-snap-2' } }));
    const restored = await call('restoreSnapshot', () => api.restoreSnapshot({ projectId: project, snapshotId: id }, { name: 'fidelity-ts-restored' }));
    await settle();
    if (restored) {
      restoredId = restored.branch.id;
      await call('finalizeRestoreBranch', () => api.finalizeRestoreBranch(project, restoredId, {}));
      await settle();
    }
    await call('deleteSnapshot', () => api.deleteSnapshot(project, id));
    await settle();
  }
  const ops = await call('listProjectOperations', () => api.listProjectOperations({ projectId: project }));
  if (ops) await call('getProjectOperation', () => api.getProjectOperation(project, ops.operations[0].id));
  if (await call('setDefaultProjectBranch', () => api.setDefaultProjectBranch(project, branch))) {
    await settle();
    await call('setDefaultProjectBranch (back)', () => api.setDefaultProjectBranch(project, main.id));
    await settle();
  }
  await call('deleteProjectBranch', () => api.deleteProjectBranch({ projectId: project, branchId: branch }));
  await settle();
  if (restoredId) {
    await call('deleteProjectBranch (restored)', () => api.deleteProjectBranch({ projectId: project, branchId: restoredId }));
    await settle();
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
