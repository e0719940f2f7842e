// R-RACE (plan §3.2): concurrent reservations under the distributed seat lock.
//   TC-1  100 users, the same seat, released at one instant  → exactly one 200, 99 × 409
//   TC-2  100 users, 100 different seats                       → 100 × 200
//   TC-3  50 concurrent requests × 2 rounds, one Idempotency-Key → one reservation; every answer 200 with it
//
// Release: per-vu-iterations executors; every VU first opens its connection (warm-up), then sleeps
// until a common wall-clock instant fixed in setup() (RELEASE_DELAY_MS after it, or RELEASE_AT = epoch
// ms), then sends. Each send instant minus the release instant is emitted as sc_release_offset_ms{tc};
// the TC-1 spread (max − min) is a KPI. The race runs at the plan's full 100 users whatever SCALE says.
//
// Queue tokens: a reservation needs an ENTERED token, and a queue target admits its capacity (50) at a
// time. By ADMISSION (admittedUsers in lib/common.js): on queue targets of their own from RACE_TARGET_FIRST
// up (private_targets, never the concert's queue), on the concert's queue at the target's pace (wait), or one
// user's token shared by all (shared_token, the plan's TC example).
//
// Env (besides lib/common.js): RACE_USERS (100), TC1_SEAT (1), TC2_SEAT_FIRST (101), TC3_SEAT (201),
// TC3_VUS (50), TC3_ROUNDS (2), TC3_ROUND_GAP_MS (5000), TC_GAP_MS (6000), RACE_TARGET_FIRST (9001),
// RELEASE_DELAY_MS (3000), RELEASE_AT (epoch ms, overrides the delay). Users: USER_OFFSET … +2·RACE_USERS (TC-1, then TC-2, then one TC-3 user).
import exec from 'k6/execution';
import { check } from 'k6';
import {
  ADMISSION, ADMISSION_WAIT_S, DIALECT, USER_OFFSET, admittedUsers, checkTarget, isOk, releasePlace, isTaken, releaseOffset, reserveRequest, sendReserve, tc3Reservation,
  uuid, warmUp, sleepUntil,
} from './lib/common.js';

const N = parseInt(__ENV.RACE_USERS || '100', 10);
const TC1_SEAT = parseInt(__ENV.TC1_SEAT || '1', 10);
const TC2_SEAT_FIRST = parseInt(__ENV.TC2_SEAT_FIRST || '101', 10);
const TC3_SEAT = parseInt(__ENV.TC3_SEAT || '201', 10);
const TC3_VUS = parseInt(__ENV.TC3_VUS || '50', 10);
const TC3_ROUNDS = parseInt(__ENV.TC3_ROUNDS || '2', 10);
const TC3_GAP = parseInt(__ENV.TC3_ROUND_GAP_MS || '5000', 10);
const TARGET_FIRST = parseInt(__ENV.RACE_TARGET_FIRST || '9001', 10);
const DELAY = parseInt(__ENV.RELEASE_DELAY_MS || '3000', 10);
const TC_GAP = parseInt(__ENV.TC_GAP_MS || '6000', 10); // each case settles (lock wait 3 s) before the next

// The success and seat-taken answers in the target's dialect (the plan's 200 and 409).
const OK = DIALECT.steps.reserve.ok[0];
const TAKEN = (DIALECT.steps.reserve.taken || [409])[0];

const perVu = (vus, iterations) => ({ executor: 'per-vu-iterations', vus, iterations, maxDuration: '120s' });

export const options = {
  setupTimeout: `${ADMISSION_WAIT_S + 120}s`,
  scenarios: {
    race_tc1: Object.assign(perVu(N, 1), { exec: 'tc1' }),
    race_tc2: Object.assign(perVu(N, 1), { exec: 'tc2' }),
    race_tc3: Object.assign(perVu(TC3_VUS, TC3_ROUNDS), { exec: 'tc3' }),
  },
  // Stated up front (R-RACE-1 … R-RACE-6); a crossed threshold is reported, the verdict stage decides.
  thresholds: {
    [`http_reqs{name:tc1,status:${OK}}`]: [`count==1`],
    [`http_reqs{name:tc1,status:${TAKEN}}`]: [`count==${N - 1}`],
    [`http_reqs{name:tc2,status:${OK}}`]: [`count==${N}`],
    [`http_reqs{name:tc3,status:${OK}}`]: [`count==${TC3_VUS * TC3_ROUNDS}`],
    'http_req_failed{endpoint:API-3}': ['rate==0'],
    'sc_lock_timeouts': [`count<${Math.max(1, Math.ceil(0.05 * N))}`],
    'sc_release_offset_ms{tc:tc1}': ['max<50'],
  },
};

export function setup() {
  checkTarget();
  const users = [];
  for (let i = 0; i < 2 * N + 1; i++) users.push(USER_OFFSET + i);
  const admitted = admittedUsers(users, TARGET_FIRST);
  const base = __ENV.RELEASE_AT ? parseInt(__ENV.RELEASE_AT, 10) : Date.now() + DELAY;
  const release = { tc1: base, tc2: base + TC_GAP, tc3: [] };
  for (let r = 0; r < TC3_ROUNDS; r++) release.tc3.push(base + 2 * TC_GAP + r * TC3_GAP);
  return { users: admitted.users, tokens: admitted.tokens, release, tc3Key: `tc3-${uuid()}` };
}

// With one shared token, its user is done after the race: a purchase frees the place (lib/common.js).
export function teardown(data) {
  if (ADMISSION !== 'shared_token') return;
  console.log(`race: the shared user's place: ${releasePlace(data.users[0], data.tokens[0], TC3_SEAT + 1)}`);
}

function fire(data, index, seat, name, releaseAt, key) {
  const req = reserveRequest(data.users[index], data.tokens[index], [seat], key || uuid(), name,
    { tc: name, seat: String(seat) });
  warmUp();
  sleepUntil(releaseAt);
  const sentAt = Date.now();
  const out = sendReserve(req);
  releaseOffset.add(sentAt - releaseAt, { tc: name });
  return out;
}

export function tc1(data) {
  const idx = exec.scenario.iterationInTest; // unique 0 … N−1 within this scenario
  const { res } = fire(data, idx, TC1_SEAT, 'tc1', data.release.tc1);
  check(res, { 'tc1: success or taken': (r) => isOk('reserve', r.status) || isTaken('reserve', r.status) }, { tc: 'tc1' });
}

export function tc2(data) {
  const idx = exec.scenario.iterationInTest;
  const { res } = fire(data, N + idx, TC2_SEAT_FIRST + idx, 'tc2', data.release.tc2);
  check(res, { 'tc2: success': (r) => isOk('reserve', r.status) }, { tc: 'tc2' });
}

export function tc3(data) {
  const round = exec.vu.iterationInScenario;
  const { res, body } = fire(data, 2 * N, TC3_SEAT, 'tc3', data.release.tc3[round], data.tc3Key);
  const rid = body && body.reservationId ? String(body.reservationId) : '';
  tc3Reservation.add(1, { status: String(res.status), reservationId: rid, round: String(round + 1) });
  check(res, { 'tc3: success with a reservationId': (r) => isOk('reserve', r.status) && rid !== '' }, { tc: 'tc3' });
}
