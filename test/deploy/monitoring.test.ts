/**
 * monitoring/: the alert rules and the Grafana dashboard may only name metrics
 * the agent really exports. The names come from a live agent's /metrics (the
 * executable, connected to the project's control plane), never from a list
 * kept here. `promtool check rules` / `promtool test rules` run in
 * scripts/ci-deploy-checks.sh.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { ROOT, TOKEN, agentEnv, startPlane, startWolf, spawnAgent } from '../helpers/harness.js';
import { get } from '../helpers/ops.js';
import { exportedNames, metricNames } from './helpers/promql.js';

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}
interface AlertTest {
  alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[];
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { uid?: string };
  targets?: { expr?: string; refId?: string }[];
}
interface Dashboard {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string | { query?: string } }[] };
  annotations: { list: { expr?: string }[] };
}

const rules = (parse(readFileSync(join(ROOT, 'monitoring/alerts.yaml'), 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const ruleTests = (parse(readFileSync(join(ROOT, 'monitoring/alerts.test.yaml'), 'utf8')) as { tests: AlertTest[] }).tests;
const dashboard = JSON.parse(readFileSync(join(ROOT, 'monitoring/dashboard.json'), 'utf8')) as Dashboard;

/** Every PromQL expression in the dashboard: panel targets, annotations, variable queries. */
function dashboardExpressions(): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const p of dashboard.panels) for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId ?? ''}`, expr: t.expr });
  for (const a of dashboard.annotations.list) if (a.expr) out.push({ where: 'annotation', expr: a.expr });
  for (const v of dashboard.templating.list) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (v.type !== 'query' || !q) continue;
    // label_values(metric{...}, label): the second argument is a label, not a metric.
    const m = /^label_values\((.*),\s*\w+\)$/.exec(q);
    out.push({ where: `variable $${v.name}`, expr: m ? m[1]! : q });
  }
  return out;
}

test('the PromQL name extraction finds metrics and nothing else', () => {
  assert.deepEqual(
    metricNames(
      'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job=~"$job", x="y z"}[$__rate_interval]))) / on (instance) b_total offset 5m > bool 0.1 and c unless d',
    ),
    ['a_bucket', 'b_total', 'c', 'd'],
  );
  assert.deepEqual(metricNames('sum without (result) (increase(x_total{result!="ok"}[5m])) > 0'), ['x_total']);
  assert.deepEqual(metricNames('changes(process_start_time_seconds[30m]) >= 3'), ['process_start_time_seconds']);
});

test('monitoring/ names only metrics a live agent exports', async (t) => {
  // A real agent, connected, so that its /metrics is what Prometheus scrapes.
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const agent = spawnAgent(
    t,
    agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'monitoring', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local, REVDIAL_METRICS_ADDR: '127.0.0.1:0' }),
  );
  const serving = await agent.logs.waitFor((l) => typeof l.metricsAddr === 'string', 15_000);
  await plane.waitForRunner('wolf-monitoring', 15_000);
  const res = await get(Number(String(serving.metricsAddr).split(':').at(-1)), '/metrics');
  assert.equal(res.status, 200);
  const exported = exportedNames(res.body);
  assert.ok(exported.has('revdial_control_connected') && exported.has('process_start_time_seconds'), [...exported].join(' '));

  await t.test('alert rules', () => {
    assert.ok(rules.length >= 6);
    for (const rule of rules) {
      const names = metricNames(rule.expr);
      assert.ok(names.length > 0, `${rule.alert ?? rule.record}: no metric found in ${rule.expr}`);
      for (const name of names) assert.ok(exported.has(name), `${rule.alert ?? rule.record} uses ${name}, which the agent does not export`);
    }
  });

  await t.test('dashboard queries', () => {
    const exprs = dashboardExpressions();
    assert.ok(exprs.length >= 15);
    for (const { where, expr } of exprs) {
      const names = metricNames(expr);
      assert.ok(names.length > 0, `${where}: no metric found in ${expr}`);
      for (const name of names) assert.ok(exported.has(name), `${where} uses ${name}, which the agent does not export`);
    }
  });
});

test('every alert has a test that fires it and one where it stays quiet', () => {
  for (const rule of rules.filter((r) => r.alert)) {
    const cases = ruleTests.flatMap((t) => t.alert_rule_test ?? []).filter((c) => c.alertname === rule.alert);
    assert.ok(
      cases.some((c) => (c.exp_alerts ?? []).length > 0),
      `${rule.alert}: no test where it fires`,
    );
    assert.ok(
      cases.some((c) => (c.exp_alerts ?? []).length === 0),
      `${rule.alert}: no test where it stays quiet`,
    );
  }
});

test('dashboard: the shape Grafana imports', () => {
  assert.equal(typeof dashboard.uid, 'string');
  const ids = dashboard.panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  assert.ok(dashboard.templating.list.some((v) => v.type === 'datasource' && v.name === 'datasource'));
  for (const p of dashboard.panels.filter((p) => p.type !== 'row')) {
    assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has no query`);
    assert.equal(p.datasource?.uid, '${datasource}', `panel "${p.title}" uses the dashboard's data source variable`);
  }
  // The list: connection state, tunnels, setup latency, bytes, refusals.
  const all = dashboardExpressions()
    .map((e) => e.expr)
    .join('\n');
  for (const name of [
    'revdial_control_connected',
    'revdial_tunnels_active',
    'revdial_tunnel_setup_seconds_bucket',
    'revdial_tunnel_bytes_total',
    'refused_limit',
  ]) {
    assert.ok(all.includes(name), `the dashboard shows ${name}`);
  }
});
