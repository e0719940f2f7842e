// R-SOAK (plan §3.4): endurance. The plan's "1,000 concurrent users" (× SCALE: 1,000 distinct users, each
// with its token, whose requests arrive together at SOAK_RATE) for 30 minutes (× TIME_SCALE), each
// request drawn from the plan's mix: 70 % API-2 poll, 20 % API-5 concert list, 10 % API-3 reservation.
// Open model: a constant arrival rate of SOAK_RATE requests per second (default 3,333 × SCALE: the
// plan's polling load, 10,000 users every 3 s, R-SPIKE-8) made by the plan's USERS users (1,000 at
// scale 1: user ids USER_OFFSET … +USERS − 1, one queue token each).
// VU pool, by Little's law (VUs in use = rate × mean latency). USERS VUs alone (1,000 at scale 1) carry
// the rate only while the mean latency stays under USERS / RATE = 0.3 s; at scale 0.02 (20 VUs, 67 req/s)
// one 250 ms stall of a busy machine exhausts them. So k6 pre-allocates
// max(USERS, RATE × SOAK_PREALLOC_LATENCY_S, SOAK_MIN_VUS) VUs (defaults 0.5 s and 50: 1,667 at scale 1,
// 50 at scale 0.02) and may add more up to max(that, RATE × SOAK_VU_LATENCY_S) (default 2 s: 6,666 at
// scale 1, 134 at 0.02). Pre-allocated, because k6 drops the iterations that find no free VU while it
// initialises an extra one mid-run. VU n acts
// for user USER_OFFSET + (n − 1) mod USERS: an extra VU is another connection of one of the same USERS
// users (same token), so the soak still has exactly USERS distinct users, and more than USERS requests
// are in flight only while the mean latency exceeds USERS / RATE. Dropped iterations therefore mean the
// target or the generator really could not keep up (mean latency past 0.5 s faster than k6 can add VUs,
// or past SOAK_VU_LATENCY_S, or k6 starved of CPU): the runner marks the stage INVALID rather than reporting the optimistic latencies of a closed loop.
// Queue tokens, by ADMISSION (lib/common.js): private_targets — each VU's first iteration issues its
// user's token on a queue target of its own (SOAK_TARGET_FIRST + user index), so the soak's users are
// admitted whatever the spike left holding the concert's places; shared_token — one user is admitted in
// setup and every VU acts for it (its place is freed at the end, as the race's is); wait — every user's
// token on the concert's queue, polled until ENTERED in setup. Every later iteration polls, lists concerts,
// or (once its token is ENTERED) reserves one seat of SOAK_SEAT_FIRST … +SOAK_SEAT_COUNT; a user still
// waiting polls instead of reserving (the plan answers reservations only to admitted users, R-SPIKE-11).
// A user whose token expires (the queue's TTL: 30 min in the plan, as long as the soak) queues again with a
// new token, tagged reentry=true, instead of sending reservations a dead token (401) or only polling.
// The plan's watch bands are thresholds; the alarm levels abort the run (errors > 1 %, p95 > 3 s).
//
// Env (besides lib/common.js): SOAK_USERS (1000), SOAK_RATE (3333), SOAK_DURATION_S (1800),
// SOAK_SEAT_FIRST (601), SOAK_SEAT_COUNT (400), SOAK_PREALLOC_LATENCY_S (0.5), SOAK_VU_LATENCY_S (2),
// SOAK_MIN_VUS (50), SOAK_TARGET_FIRST (20001: user i's k-th entry queues on 20001 + i + k·users), SOAK_RELEASE_SEAT (SOAK_SEAT_FIRST − 1: the seat the
// shared user buys). Users: USER_OFFSET … +SOAK_USERS·SCALE − 1.
import exec from 'k6/execution';
import {
  ABORT_ERROR_RATE, abortOnLatency,
  ADMISSION, ADMISSION_WAIT_S, SCALE, USER_OFFSET, admittedUsers, checkTarget, concerts, dur, issueToken,
  pollToken, releasePlace, reserve, scaled, uuid,
} from './lib/common.js';

const USERS = scaled(parseInt(__ENV.SOAK_USERS || '1000', 10));
const RATE = Math.max(1, Math.round(parseFloat(__ENV.SOAK_RATE || '3333') * SCALE));
const DURATION_S = parseFloat(__ENV.SOAK_DURATION_S || '1800');
const SEAT_FIRST = parseInt(__ENV.SOAK_SEAT_FIRST || '601', 10);
const SEAT_COUNT = parseInt(__ENV.SOAK_SEAT_COUNT || '400', 10);
const VU_LATENCY_S = parseFloat(__ENV.SOAK_VU_LATENCY_S || '2');
const MIN_VUS = parseInt(__ENV.SOAK_MIN_VUS || '50', 10);
const PREALLOC_LATENCY_S = parseFloat(__ENV.SOAK_PREALLOC_LATENCY_S || '0.5');
const TARGET_FIRST = parseInt(__ENV.SOAK_TARGET_FIRST || '20001', 10);
const RELEASE_SEAT = parseInt(__ENV.SOAK_RELEASE_SEAT || String(SEAT_FIRST - 1), 10); // outside the mix's seats
const PRE_VUS = Math.max(USERS, Math.ceil(RATE * PREALLOC_LATENCY_S), MIN_VUS);
const MAX_VUS = Math.max(PRE_VUS, Math.ceil(RATE * VU_LATENCY_S));

export const options = {
  setupTimeout: `${ADMISSION_WAIT_S + 120}s`,
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: dur(DURATION_S),
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
      gracefulStop: '30s',
    },
  },
  // Stated up front: R-GATE p95 < 1 s and errors < 0.1 % (normal band); alarm levels abort.
  thresholds: {
    'http_req_duration': ['p(95)<1000', ...abortOnLatency('30s')],
    'http_req_failed': ['rate<0.001', { threshold: `rate<${ABORT_ERROR_RATE}`, abortOnFail: true, delayAbortEval: '30s' }],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

export function setup() {
  checkTarget();
  const out = { users: USERS, rate: RATE, scale: SCALE, preAllocatedVUs: PRE_VUS, maxVUs: MAX_VUS };
  if (ADMISSION === 'private_targets') return out;
  const all = [];
  for (let i = 0; i < (ADMISSION === 'shared_token' ? 1 : USERS); i++) all.push(USER_OFFSET + i);
  const admitted = admittedUsers(all, TARGET_FIRST);
  return Object.assign(out, { admittedUsers: admitted.users, tokens: admitted.tokens });
}

// With one shared token, its user is done after the soak: a purchase frees the place (lib/common.js).
export function teardown(data) {
  if (ADMISSION !== 'shared_token') return;
  console.log(`soak: the shared user's place: ${releasePlace(data.admittedUsers[0], data.tokens[0], RELEASE_SEAT)}`);
}

let token = null;
let entered = false; // what this user's last token or poll answer said: only an admitted user reserves
let entries = 0;
let reenter = false; // its token expired (the queue's TTL, 30 min in the plan): it queues again, as a person would

export default function (data) {
  const idx = (exec.vu.idInTest - 1) % USERS;
  let user = USER_OFFSET + idx;
  if (data.tokens) {  // admitted in setup (shared_token, wait)
    const k = idx % data.tokens.length;
    user = data.admittedUsers[k];
    if (token === null && !reenter) {
      token = data.tokens[k];
      entered = true;
    }
  }
  if (token === null) {
    // private_targets: a queue target of the user's own, a new one for each entry (a service may keep one
    // token per target and user for good); admitted in setup: the concert's queue, polled from here on
    const target = data.tokens ? undefined : TARGET_FIRST + idx + entries * USERS;
    entries += 1;
    const { body } = issueToken(user, { reentry: String(reenter) }, target);
    token = body && body.token ? body.token : '';
    entered = !!(body && body.status === 'ENTERED');
    return;
  }
  const r = Math.random();
  if (r < 0.7 || (r >= 0.9 && !entered)) {
    const { body } = pollToken(token || 'none', {}, user);
    if (body && body.status) entered = body.status === 'ENTERED';
    if (body && (body.status === 'EXPIRED' || body.status === 'DONE')) expired();
  } else if (r < 0.9) {
    concerts();
  } else {
    const seat = SEAT_FIRST + Math.floor(Math.random() * SEAT_COUNT);
    const { res } = reserve(user, token || 'none', [seat], uuid(), 'reserve');
    if (res.status === 401) expired(); // the token died between two polls
  }
}

function expired() {
  token = null;
  entered = false;
  reenter = true;
}
