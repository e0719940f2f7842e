// R-SOAK (plan §3.4): endurance. 1,000 concurrent users (× SCALE) for 30 minutes (× TIME_SCALE), each
// request drawn from the plan's mix: 70 % API-2 poll, 20 % API-5 concert list, 10 % API-3 reservation.
// Open model: a constant arrival rate of SOAK_RATE requests per second (default 3,333 × SCALE: the
// plan's polling load, 10,000 users every 3 s, R-SPIKE-8) served by a pool of exactly USERS VUs — the
// 1,000 concurrent users. If the pool cannot keep up, k6 drops iterations and the runner marks the
// stage INVALID rather than reporting the optimistic latencies of a closed loop.
// Each VU is one user: its first iteration issues its queue token (API-1, concert queue), every later
// one polls with it, lists concerts, or reserves one seat of SOAK_SEAT_FIRST … +SOAK_SEAT_COUNT.
// The plan's watch bands are thresholds; the alarm levels abort the run (errors > 1 %, p95 > 3 s).
//
// Env (besides lib/common.js): SOAK_USERS (1000), SOAK_RATE (3333), SOAK_DURATION_S (1800),
// SOAK_SEAT_FIRST (601), SOAK_SEAT_COUNT (400). Users: USER_OFFSET … +SOAK_USERS·SCALE − 1.
import exec from 'k6/execution';
import {
  SCALE, USER_OFFSET, checkTarget, concerts, dur, issueToken, pollToken, reserve, scaled, uuid,
} from './lib/common.js';

const USERS = scaled(parseInt(__ENV.SOAK_USERS || '1000', 10));
const RATE = Math.max(1, Math.round(parseFloat(__ENV.SOAK_RATE || '3333') * SCALE));
const DURATION_S = parseFloat(__ENV.SOAK_DURATION_S || '1800');
const SEAT_FIRST = parseInt(__ENV.SOAK_SEAT_FIRST || '601', 10);
const SEAT_COUNT = parseInt(__ENV.SOAK_SEAT_COUNT || '400', 10);

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: dur(DURATION_S),
      preAllocatedVUs: USERS,
      maxVUs: USERS,
      gracefulStop: '30s',
    },
  },
  // Stated up front: R-GATE p95 < 1 s and errors < 0.1 % (normal band); alarm levels abort.
  thresholds: {
    'http_req_duration': ['p(95)<1000', { threshold: 'p(95)<3000', abortOnFail: true, delayAbortEval: '30s' }],
    'http_req_failed': ['rate<0.001', { threshold: 'rate<0.01', abortOnFail: true, delayAbortEval: '30s' }],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

export function setup() {
  checkTarget();
  return { users: USERS, rate: RATE, scale: SCALE };
}

let token = null;

export default function () {
  const user = USER_OFFSET + exec.vu.idInTest - 1;
  if (token === null) {
    const { body } = issueToken(user);
    token = body && body.token ? body.token : '';
    return;
  }
  const r = Math.random();
  if (r < 0.7) {
    pollToken(token || 'none');
  } else if (r < 0.9) {
    concerts();
  } else {
    const seat = SEAT_FIRST + Math.floor(Math.random() * SEAT_COUNT);
    reserve(user, token || 'none', [seat], uuid(), 'reserve');
  }
}
