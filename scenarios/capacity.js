// R-WHY-1 (plan §1.2, §7.2): one step of the capacity stairs. An open model: RATE requests per second
// for HOLD_S seconds, whatever the answers take (constant-arrival-rate), in the spike's mix of the plan's
// peak — 1,000 token issues (API-1) to 3,333 polls (API-2) per second, so 23 % issue and 77 % poll.
// Each VU keeps the tokens it was issued and polls them in turn; a VU with none issues one first.
// Users cycle through USER_OFFSET … USER_OFFSET + USER_COUNT − 1 (a user issued twice gets its token
// back, as a retrying user would). Which step passes is decided afterwards from the stored seconds
// (soundcheck.sizing.judge_step): k6 here only offers the load and stops it at the plan's harm levels.
//
// Env (besides lib/common.js): RATE (req/s offered), HOLD_S (seconds), TOKEN_SHARE (0.2308),
// MAX_VUS (pre-allocated VUs; dropped iterations say when they were too few).
import exec from 'k6/execution';
import {
  ABORT_ERROR_RATE, abortOnLatency, CONCERT_ID, USER_COUNT, USER_OFFSET, checkTarget, issueToken, pollToken,
} from './lib/common.js';

const RATE = parseFloat(__ENV.RATE || '50');
const HOLD_S = parseFloat(__ENV.HOLD_S || '30');
const TOKEN_SHARE = parseFloat(__ENV.TOKEN_SHARE || String(1000 / 4333));
const MAX_VUS = parseInt(__ENV.MAX_VUS || String(Math.max(20, Math.ceil(RATE * 0.5))), 10);

export const options = {
  scenarios: {
    capacity: {
      executor: 'constant-arrival-rate',
      rate: Math.round(RATE * 10),
      timeUnit: '10s', // tenths of a request per second stay exact
      duration: `${HOLD_S}s`,
      preAllocatedVUs: MAX_VUS,
      maxVUs: MAX_VUS,
      gracefulStop: '10s',
    },
  },
  // Stated up front: the plan's harm levels stop a step that is far past the knee (errors > 1 %, p95 > 3 s
  // held 10 s); the gates themselves (R-SPIKE-1/2/6) are judged on the step's steady window afterwards.
  thresholds: {
    'http_req_failed': [{ threshold: `rate<${ABORT_ERROR_RATE}`, abortOnFail: true, delayAbortEval: '10s' }],
    'http_req_duration': abortOnLatency('10s'),
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  checkTarget();
  return { rate: RATE, hold: HOLD_S };
}

const tokens = [];
let nextPoll = 0;

export default function () {
  const i = exec.scenario.iterationInTest;
  if (tokens.length === 0 || (i * 0.6180339887498949) % 1 < TOKEN_SHARE) {
    const user = USER_OFFSET + (i % USER_COUNT);
    const { body } = issueToken(user, {}, CONCERT_ID);
    if (body && body.token) {
      tokens.push({ token: body.token, user: user });
      if (tokens.length > 50) tokens.shift();
    }
    return;
  }
  const t = tokens[nextPoll % tokens.length];
  nextPoll += 1;
  pollToken(t.token, {}, t.user);
}
