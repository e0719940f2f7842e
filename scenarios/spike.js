// R-SPIKE (plan §3.1): ticket open. 10,000 virtual users (× SCALE) ramp 0 → 10,000 in 10 s, hold to
// 60 s, ramp down by 120 s (× TIME_SCALE). Each user, once:
//   API-1 issue a token on the concert's queue (CONCERT_ID, default 1)
//   API-2 poll every POLL_INTERVAL_S (3 s) until ENTERED, for up to 30 min (× TIME_SCALE)
//   API-3 reserve seats SEAT_IDS ([1, 2]) of SHOW_ID (101): 200, or 409 when taken
//   API-4 pay SPIKE_AMOUNT (150,000) and watch the payment until COMPLETED or FAILED
// A user whose journey is over stays connected but idle (the VU shape is the plan's user count);
// users still polling when the ramp-down reaches them finish their journey (gracefulRampDown covers
// the poll limit), as real users in a queue would.
// Poll phase: at scale 1 users arrive over the 10 s ramp, so their 3 s polls are spread over every second.
// When TIME_SCALE shrinks the ramp below one poll interval (TIME_SCALE < 0.3 at 3 s), all users would
// arrive within the same instant and poll in lockstep: bursts every 3 s and seconds with no answer at
// all. Then each user's first poll comes after an offset in (0, POLL_INTERVAL_S] spread by VU id
// (golden-ratio sequence: even over the interval for any number of users) instead of a full interval;
// later polls keep the plan's 3 s cadence. POLL_SPREAD=auto (default: only when the ramp is shorter
// than the interval), on, or off (the plan's first poll one interval after the token, always).
//
// Metrics: sc_token_status{status} (ENTERED/WAITING at issue: R-SPIKE-10), sc_wait_until_entered_s
// (admissions, R-SPIKE-12), sc_poll_gave_up{why}, sc_saga_time_s (each terminal payment frees its user's
// place), sc_saga_completed, sc_saga_unfinished, sc_lock_timeouts, and one sc_journey per user
// (R-SPIKE-13): outcome entered | gave_up | failed and how —
//   entered: paid_COMPLETED, paid_FAILED, payment_unfinished, seat_taken, reserve_<status>, pay_<status>;
//   gave_up: limit, gone, error (see waitUntilEntered); failed: token_<status> (no token issued).
//
// Env (besides lib/common.js): POLL_INTERVAL_S (3; not time-scaled: it sets the polling rate),
// POLL_LIMIT_S (1800 × TIME_SCALE), POLL_SPREAD (auto), SEAT_IDS (1,2), SPIKE_AMOUNT (150000), WATCH_LIMIT_S (120).
// Users: USER_OFFSET … USER_OFFSET + 10,000·SCALE − 1 (capped by USER_COUNT).
import exec from 'k6/execution';
import { sleep } from 'k6';
import {
  ABORT_ERROR_RATE, abortOnLatency,
  SCALE, TIME_SCALE, USER_COUNT, USER_OFFSET, dur, issueToken, pay, reserve, scaled, uuid, waitEntered,
  waitUntilEntered, watchPayment, checkTarget, journey, isOk, isTaken,
} from './lib/common.js';

const N = scaled(10000);
const POLL_S = parseFloat(__ENV.POLL_INTERVAL_S || '3');
const POLL_LIMIT_S = parseFloat(__ENV.POLL_LIMIT_S || String(1800 * TIME_SCALE));
const WATCH_LIMIT_S = parseFloat(__ENV.WATCH_LIMIT_S || '120');
const SEATS = (__ENV.SEAT_IDS || '1,2').split(',').map((s) => parseInt(s, 10));
const AMOUNT = parseInt(__ENV.SPIKE_AMOUNT || '150000', 10);
const TAIL = `${Math.ceil(POLL_LIMIT_S + WATCH_LIMIT_S + 30)}s`;
const RAMP_S = 10 * TIME_SCALE;
const POLL_SPREAD = (__ENV.POLL_SPREAD || 'auto').toLowerCase();
const SPREAD = POLL_SPREAD === 'on' || (POLL_SPREAD === 'auto' && RAMP_S < POLL_S);

// Seconds from the token to this user's first poll: the plan's interval, or (compressed ramp) the
// user's place in the interval — 1 − frac(idx·φ) ∈ (0, 1], evenly spread over consecutive VU ids.
export function firstPollDelay(idx) {
  if (!SPREAD) return POLL_S;
  const frac = (idx * 0.6180339887498949) % 1;
  return POLL_S * (1 - frac);
}

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: dur(10), target: N },
        { duration: dur(50), target: N },
        { duration: dur(60), target: 0 },
      ],
      gracefulRampDown: TAIL,
      gracefulStop: TAIL,
    },
  },
  // Stated up front: R-SPIKE-1 (token p95 < 500 ms), R-SPIKE-2 (poll p99 < 1 s), R-SPIKE-6 (5xx and
  // unanswered < 0.1 %). The plan's alarm levels abort the run (errors > 1 %, p95 > 3 s, held 30 s).
  thresholds: {
    'http_req_duration{endpoint:API-1}': ['p(95)<500'],
    'http_req_duration{endpoint:API-2}': ['p(99)<1000'],
    'http_req_failed': ['rate<0.001', { threshold: `rate<${ABORT_ERROR_RATE}`, abortOnFail: true, delayAbortEval: '30s' }],
    'http_req_duration': abortOnLatency('30s'),
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

export function setup() {
  checkTarget();
  return { scale: SCALE, users: N, pollSpread: SPREAD };
}

let done = false;

export default function () {
  if (done) {
    sleep(POLL_S); // this user's journey is over: connected, idle
    return;
  }
  done = true;
  const idx = exec.vu.idInTest - 1;
  if (idx >= USER_COUNT) return; // more VUs than seeded users given to this scenario
  const user = USER_OFFSET + idx;
  const issuedAt = Date.now();
  const { res, body } = issueToken(user);
  if (!body || !body.token) {
    journey.add(0, { outcome: 'failed', how: `token_${res.status}`, at_issue: 'NONE' });
    return;
  }
  const atIssue = body.status === 'ENTERED' ? 'ENTERED' : 'WAITING';
  let waited = 0;
  if (atIssue === 'ENTERED') {
    waitEntered.add(0);
  } else {
    sleep(firstPollDelay(idx));
    const w = waitUntilEntered(body.token, issuedAt, POLL_S, POLL_LIMIT_S, {}, user);
    waited = w.waited;
    if (!w.entered) {
      journey.add(waited, { outcome: 'gave_up', how: w.why, at_issue: atIssue });
      return;
    }
  }
  journey.add(waited, { outcome: 'entered', how: afterEntering(user, body.token), at_issue: atIssue });
}

// The rest of an admitted user's journey; returns how it ended.
function afterEntering(user, token) {
  const r = reserve(user, token, SEATS, uuid(), 'reserve');
  if (isTaken('reserve', r.res.status)) return 'seat_taken';
  if (!isOk('reserve', r.res.status) || !r.body || !r.body.reservationId) return `reserve_${r.res.status}`;
  const start = Date.now();
  const p = pay(user, r.body.reservationId, AMOUNT, uuid());
  if (!isOk('pay', p.res.status) || !p.body || !p.body.paymentId) return `pay_${p.res.status}`;
  const w = watchPayment(user, p.body.paymentId, start, {}, 0.5, WATCH_LIMIT_S);
  return w.status ? `paid_${w.status}` : 'payment_unfinished';
}
