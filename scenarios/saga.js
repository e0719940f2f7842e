// R-SAGA (plan §3.3): the payment saga and its compensation.
//   compensation  one user with a balance of 10,000 reserves two seats and pays 150,000 → the saga must
//                 end FAILED (insufficient points), the reservation CANCELLED, the seats AVAILABLE again,
//                 within 10 s (checked from the client here, from the database snapshot afterwards).
//   concurrent    100 users (× SCALE) each hold a reservation, then pay at one common instant; every
//                 payment is watched (GET /api/v1/payments/{id}) until COMPLETED or FAILED; the time
//                 until every saga is terminal is measured.
// Each payment's time from request to terminal is sc_saga_time_s{case,status,reason}; sagas the client
// gave up on are sc_saga_unfinished; sc_compensation is 1 for a compensation seen complete, else 0.
//
// Env (besides lib/common.js): SAGA_USERS (100, × SCALE), SAGA_SEAT_FIRST (301: two seats per user),
// SAGA_AMOUNT (150000), SAGA_LOW_BALANCE (10000), SAGA_TARGET_FIRST (9501: private queue targets),
// RELEASE_DELAY_MS (3000), WATCH_INTERVAL_S (0.25), WATCH_LIMIT_S (120).
// Users: USER_OFFSET (compensation: must hold exactly SAGA_LOW_BALANCE points) and USER_OFFSET+1 …
// +SAGA_USERS (concurrent: at least SAGA_AMOUNT each). The campaign's fixtures step sets the balances
// (tasks/fixtures.py); run alone, set them first.
import exec from 'k6/execution';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import {
  ADMISSION_WAIT_S, USER_OFFSET, SCALE, admittedUsers, checkTarget, http_get_reservation, isOk, pay, reserve, sleepUntil, uuid,
  warmUp, watchPayment,
} from './lib/common.js';

const N = Math.max(1, Math.round(parseInt(__ENV.SAGA_USERS || '100', 10) * SCALE));
const SEAT_FIRST = parseInt(__ENV.SAGA_SEAT_FIRST || '301', 10);
const AMOUNT = parseInt(__ENV.SAGA_AMOUNT || '150000', 10);
const LOW_BALANCE = parseInt(__ENV.SAGA_LOW_BALANCE || '10000', 10);
const TARGET_FIRST = parseInt(__ENV.SAGA_TARGET_FIRST || '9501', 10);
const DELAY = parseInt(__ENV.RELEASE_DELAY_MS || '3000', 10);

const compensation = new Rate('sc_compensation');

export const options = {
  setupTimeout: `${ADMISSION_WAIT_S + 120}s`,
  scenarios: {
    saga_compensation: { executor: 'per-vu-iterations', vus: 1, iterations: 1, maxDuration: '180s', exec: 'compensate' },
    saga_concurrent: { executor: 'per-vu-iterations', vus: N, iterations: 1, maxDuration: '300s', exec: 'concurrent' },
  },
  // Stated up front: R-SAGA-1…5 (compensated, within 10 s), R-SAGA-6 (all complete), R-GATE saga time.
  thresholds: {
    'sc_compensation': ['rate==1'],
    'sc_saga_time_s{case:compensation}': ['max<10'],
    'sc_saga_completed{case:concurrent}': ['rate==1'],
    'sc_saga_time_s{case:concurrent}': ['p(95)<10'],
    'http_req_failed': ['rate==0'],
  },
};

export function setup() {
  checkTarget();
  const comp = admittedUsers([USER_OFFSET], TARGET_FIRST);
  const others = [];
  for (let i = 1; i <= N; i++) others.push(USER_OFFSET + i);
  const rest = admittedUsers(others, TARGET_FIRST + 1);
  return { users: comp.users.concat(rest.users), tokens: comp.tokens.concat(rest.tokens),
    release: Date.now() + DELAY + N * 20 };
}

function seatsOf(index) {
  return [SEAT_FIRST + 2 * index, SEAT_FIRST + 2 * index + 1];
}

export function compensate(data) {
  const user = data.users[0];
  const r = reserve(user, data.tokens[0], seatsOf(0), uuid(), 'reserve', { case: 'compensation' });
  if (!check(r.res, { 'compensation: seats reserved': (x) => isOk('reserve', x.status) })) return;
  const start = Date.now();
  const p = pay(user, r.body.reservationId, AMOUNT, uuid(), { case: 'compensation' });
  if (!check(p.res, { 'compensation: payment accepted': (x) => isOk('pay', x.status) })) {
    compensation.add(false);
    return;
  }
  const end = watchPayment(user, p.body.paymentId, start, { case: 'compensation' });
  // The client's view of a full compensation: FAILED for insufficient points, reservation CANCELLED.
  const resv = http_get_reservation(user, r.body.reservationId);
  const ok = end.status === 'FAILED' && end.reason === 'INSUFFICIENT_POINTS' && resv && resv.status === 'CANCELLED';
  compensation.add(ok, { case: 'compensation' });
  check(end, { 'compensation: FAILED, reservation CANCELLED, within 10 s': () => ok && end.seconds < 10 });
}

export function concurrent(data) {
  const idx = 1 + exec.scenario.iterationInTest;
  const user = data.users[idx];
  warmUp();
  const r = reserve(user, data.tokens[idx], seatsOf(idx), uuid(), 'reserve', { case: 'concurrent' });
  if (!check(r.res, { 'concurrent: seats reserved': (x) => isOk('reserve', x.status) })) return;
  sleepUntil(data.release);
  const start = Date.now();
  const p = pay(user, r.body.reservationId, AMOUNT, uuid(), { case: 'concurrent' });
  if (!check(p.res, { 'concurrent: payment accepted': (x) => isOk('pay', x.status) })) return;
  const end = watchPayment(user, p.body.paymentId, start, { case: 'concurrent' });
  check(end, { 'concurrent: COMPLETED': (e) => e.status === 'COMPLETED' });
}
