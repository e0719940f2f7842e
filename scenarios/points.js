// R-POINT-1 (plan §2.1, P2): many simultaneous point charges (API-6) to ONE user must not lose an update.
// POINT_VUS (100 × SCALE) VUs are released at one instant and each sends POINT_CHARGES_PER_VU (10)
// charges of POINT_AMOUNT (1,000) back to back. setup() reads the balance before, teardown() after;
// both are emitted (sc_point_balance{phase:before|after}) with the sum of answered charges
// (sc_point_charged, the amount of every 200), so the exact expected balance can be checked:
// after == before + Σ charged.
//
// Env (besides lib/common.js): POINT_VUS (100), POINT_CHARGES_PER_VU (10), POINT_AMOUNT (1000),
// RELEASE_DELAY_MS (3000). User: USER_OFFSET.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  SCALE, USER_OFFSET, auth, charge, checkTarget, isOk, json, sleepUntil, stepRequest, warmUp,
} from './lib/common.js';

const VUS = Math.max(1, Math.round(parseInt(__ENV.POINT_VUS || '100', 10) * SCALE));
const PER_VU = parseInt(__ENV.POINT_CHARGES_PER_VU || '10', 10);
const AMOUNT = parseInt(__ENV.POINT_AMOUNT || '1000', 10);
const DELAY = parseInt(__ENV.RELEASE_DELAY_MS || '3000', 10);

const balance = new Trend('sc_point_balance');
const charged = new Counter('sc_point_charged');
const chargeOk = new Rate('sc_point_charge_ok');

export const options = {
  setupTimeout: '60s',
  scenarios: {
    points: { executor: 'per-vu-iterations', vus: VUS, iterations: PER_VU, maxDuration: '300s' },
  },
  // Stated up front: every charge answered 200 (R-POINT-1 needs them all counted), no 5xx.
  thresholds: {
    'http_req_failed': ['rate==0'],
    'sc_point_charge_ok': ['rate==1'],
  },
};

function readBalance(phase) {
  const r = stepRequest('balance', { userId: USER_OFFSET });
  const res = http.request(r.method, r.url, r.body, {
    headers: auth(USER_OFFSET), tags: { endpoint: 'ADMIN', name: `balance-${phase}` },
  });
  const body = json(res);
  if (!isOk('balance', res.status) || !body || typeof body.balance !== 'number') {
    throw new Error(`balance of user ${USER_OFFSET}: ${res.status} ${String(res.body).slice(0, 200)}`);
  }
  balance.add(body.balance, { phase: phase });
  return body.balance;
}

export function setup() {
  checkTarget();
  return { before: readBalance('before'), release: Date.now() + DELAY };
}

export default function (data) {
  if (exec.vu.iterationInScenario === 0) {
    warmUp();
    sleepUntil(data.release);
  }
  const { res } = charge(USER_OFFSET, AMOUNT);
  if (isOk('charge', res.status)) charged.add(AMOUNT);
  chargeOk.add(isOk('charge', res.status));
  check(res, { 'charge answered success': (r) => isOk('charge', r.status) });
}

export function teardown(data) {
  const after = readBalance('after');
  console.log(`points: user ${USER_OFFSET} balance ${data.before} → ${after}`);
}
