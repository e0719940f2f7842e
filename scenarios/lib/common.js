// Shared helpers of the soundcheck scenarios: configuration from the environment, the API calls
// (each tagged with its endpoint and step name), custom metrics, barriers and payment watching.
//
// Environment (all optional; defaults are the plan's numbers at SCALE=1, TIME_SCALE=1):
//   BASE_URL      target base URL (default http://127.0.0.1:8080)
//   BASE_URLS     optional, comma-separated: the API calls go to each in turn, one request after another,
//                 as a load balancer spreads requests (the sizing stage: one URL per local instance)
//   SCALE         multiplies user counts and rates (1 = the plan)
//   TIME_SCALE    multiplies durations (1 = the plan)
//   USER_OFFSET   first seeded user id this scenario may use; USER_COUNT how many (ranges must not
//                 overlap between the scenarios of one campaign: one queue token per (target, user))
//   CONCERT_ID    queue target / concert (default 1); SHOW_ID (default 101)
//   ADMISSION     how race and saga get users ENTERED at once (admittedUsers): private_targets (default),
//                 wait (tokens on CONCERT_ID, polled until ENTERED at the target's pace, for up to
//                 ADMISSION_WAIT_S, 120) or shared_token (the plan's TC example: one user's ENTERED token for all)
//   DIALECT_FILE  how the target spells the plan's API (deployments/dialects/*.json; default: the plan's):
//                 paths, where the queue token goes, which answers mean success (see soundcheck/dialect.py)
// Every custom metric is named sc_* so the ingest stage can pick them out of k6's CSV output.

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend, Rate } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const BASES = (__ENV.BASE_URLS || '').split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
let nextBase = __VU; // each VU starts at a different instance, so the VUs' turns interleave

// Where the next API call goes: BASE_URL, or the next of BASE_URLS.
function baseUrl() {
  if (BASES.length === 0) return BASE_URL;
  nextBase = (nextBase + 1) % BASES.length;
  return BASES[nextBase];
}
export const SCALE = parseFloat(__ENV.SCALE || '1');
export const TIME_SCALE = parseFloat(__ENV.TIME_SCALE || '1');
export const USER_OFFSET = parseInt(__ENV.USER_OFFSET || '1', 10);
export const USER_COUNT = parseInt(__ENV.USER_COUNT || '100000', 10);
export const CONCERT_ID = parseInt(__ENV.CONCERT_ID || '1', 10);
export const SHOW_ID = parseInt(__ENV.SHOW_ID || '101', 10);
export const ADMISSION = __ENV.ADMISSION || 'private_targets';
export const ADMISSION_WAIT_S = parseFloat(__ENV.ADMISSION_WAIT_S || '120');
// The plan's alarm levels (R-SAFE); the campaign passes the profile's `abort` levels here.
export const ABORT_P95_MS = parseFloat(__ENV.ABORT_P95_MS || '3000');
// k6's latency abort at the profile's level; none when the profile aborts on errors and resources only
// (ABORT_P95_MS=0: abort.on_latency false, the staging choice, docs/safety.md).
export function abortOnLatency(delay) {
  return ABORT_P95_MS > 0 ? [{ threshold: `p(95)<${ABORT_P95_MS}`, abortOnFail: true, delayAbortEval: delay }] : [];
}
export const ABORT_ERROR_RATE = parseFloat(__ENV.ABORT_ERROR_RATE || '0.01');
// The target's seat-lock wait (the plan's 3 s): a reservation refused at or after it timed out on the lock.
export const LOCK_WAIT_MS = parseFloat(__ENV.LOCK_WAIT_S || '3') * 1000;

// The target's API dialect. open() resolves relative to this file, so every script still runs alone.
export const DIALECT = JSON.parse(open(__ENV.DIALECT_FILE || '../../deployments/dialects/plan.json'));
const STEPS = DIALECT.steps;

// Is `status` a success of `step` in the dialect (e.g. reserve: 200 in the plan's, 201 in the original's)?
export function isOk(step, status) {
  return STEPS[step].ok.indexOf(status) >= 0;
}

// Is `status` the step's expected refusal (reserve: the seat is taken)?
export function isTaken(step, status) {
  return (STEPS[step].taken || []).indexOf(status) >= 0;
}

// The plan's payment status for the target's (e.g. SUCCEEDED → COMPLETED); unknown ones pass through.
export function paymentStatus(s) {
  return (DIALECT.payment_status || {})[s] || s;
}

// Fill a path or body template: "{name}" alone takes the typed value, inside a string its text.
function fill(t, vars) {
  if (typeof t === 'string') {
    const whole = /^\{(\w+)\}$/.exec(t);
    if (whole) return vars[whole[1]];
    return t.replace(/\{(\w+)\}/g, (_, k) => String(vars[k]));
  }
  if (Array.isArray(t)) return t.map((x) => fill(x, vars));
  if (t && typeof t === 'object') {
    const o = {};
    Object.keys(t).forEach((k) => { o[k] = fill(t[k], vars); });
    return o;
  }
  return t;
}

// One step's request as the dialect spells it: {method, url, body (JSON text or null)}.
export function stepRequest(step, vars) {
  const s = STEPS[step];
  const v = Object.assign({ concertId: CONCERT_ID, showId: SHOW_ID }, vars);
  return { method: s.method, url: `${baseUrl()}${fill(s.path, v)}`, body: s.body ? JSON.stringify(fill(s.body, v)) : null };
}

function send(step, vars, p) {
  const r = stepRequest(step, vars);
  return http.request(r.method, r.url, r.body, p);
}

// Custom metrics (k6_samples rows; see tasks/kpis.py for how each becomes a KPI).
export const lockTimeouts = new Counter('sc_lock_timeouts'); // API-3 lock timeouts (by code or by time), tag status
export const sagaTime = new Trend('sc_saga_time_s'); // payment request → terminal, tags status, reason, case
export const sagaUnfinished = new Counter('sc_saga_unfinished'); // not terminal when the client gave up
export const sagaCompleted = new Rate('sc_saga_completed'); // COMPLETED among sagas (insufficient points excluded)
export const waitEntered = new Trend('sc_wait_until_entered_s'); // token issue → ENTERED
export const pollGaveUp = new Counter('sc_poll_gave_up'); // stopped waiting, tag why: limit | gone | error
// One per user who took a token (R-SPIKE-13): value = seconds in the queue (0: ENTERED at issue; the wait
// until ENTERED; or until the give-up), tags outcome (entered | gave_up | failed), how, at_issue.
export const journey = new Trend('sc_journey');
export const releaseOffset = new Trend('sc_release_offset_ms'); // send instant − common release instant, tag tc
export const tc3Reservation = new Counter('sc_tc3_reservation'); // one per TC-3 answer, tags status, reservationId
export const tokenStatus = new Counter('sc_token_status'); // one per API-1 answer, tag status

export function scaled(n, min = 1) {
  return Math.max(min, Math.round(n * SCALE));
}

// k6 duration string for `seconds` of the plan, scaled by TIME_SCALE (at least 1 ms).
export function dur(seconds) {
  return `${Math.max(1, Math.round(seconds * TIME_SCALE * 1000))}ms`;
}

export function uuid() {
  return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (c) => {
    const r = (Math.random() * 16) | 0;
    return (c === 'x' ? r : (r & 0x3) | 0x8).toString(16);
  });
}

// Answers 2xx–4xx are expected (409 seat taken, 403 not entered …): only 5xx and no answer count as
// http_req_failed, which is the plan's error rate.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 499 }));

function params(endpoint, name, headers, extraTags) {
  return {
    headers: Object.assign({ 'Content-Type': 'application/json' }, headers || {}),
    tags: Object.assign({ endpoint: endpoint, name: name }, extraTags || {}),
    timeout: __ENV.HTTP_TIMEOUT || '30s',
  };
}

export function auth(userId) {
  return { Authorization: `Bearer test-user-${userId}` };
}

export function json(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

function errorCode(res) {
  const j = json(res);
  return j && j.error ? j.error : null;
}

// API-1: issue a queue token. Returns {res, body}.
export function issueToken(userId, extraTags, target) {
  const vars = target === undefined ? { userId: userId } : { userId: userId, concertId: target };
  const res = send('token', vars, params('API-1', 'token',
    Object.assign({ 'Idempotency-Key': uuid() }, auth(userId)), extraTags));
  const body = json(res);
  if (body && body.status) tokenStatus.add(1, { status: body.status });
  return { res, body };
}

// API-2: poll a token's status.
export function pollToken(token, extraTags, userId) {
  const headers = STEPS.poll.token_in === 'body' ? {} : { 'Queue-Token': token };
  if (userId !== undefined) Object.assign(headers, auth(userId));
  const res = send('poll', { token: token }, params('API-2', 'poll', headers, extraTags));
  return { res, body: json(res) };
}

// Poll every `intervalS` until ENTERED or `limitS` passed; emits the wait (ENTERED) or the give-up
// (sc_poll_gave_up{why}: limit — the poll limit reached; gone — the token answered EXPIRED or DONE while
// waiting; error — the poll answered no status). Returns {entered, waited (s since issue), why}.
export function waitUntilEntered(token, issuedAtMs, intervalS, limitS, extraTags, userId) {
  let why = 'limit';
  while (true) {
    const { res, body } = pollToken(token, extraTags, userId);
    if (body && body.status === 'ENTERED') {
      const waited = (Date.now() - issuedAtMs) / 1000;
      waitEntered.add(waited, extraTags);
      return { entered: true, waited: waited, why: '' };
    }
    if (body && (body.status === 'EXPIRED' || body.status === 'DONE')) { why = 'gone'; break; }
    if (!body || !body.status || !isOk('poll', res.status)) { why = 'error'; break; }
    if ((Date.now() - issuedAtMs) / 1000 + intervalS > limitS) break;
    sleep(intervalS);
  }
  pollGaveUp.add(1, Object.assign({ why: why }, extraTags || {}));
  return { entered: false, waited: (Date.now() - issuedAtMs) / 1000, why: why };
}

// API-3: reserve seats. `name` is the test case (tc1/tc2/tc3) or the step ('reserve').
// Built in two steps so barrier scenarios prepare everything before the release instant.
export function reserveRequest(userId, token, seatIds, key, name, extraTags) {
  return Object.assign(stepRequest('reserve', { seatIds: seatIds, userId: userId }), {
    params: params('API-3', name || 'reserve', Object.assign({ 'Idempotency-Key': key || uuid(), 'Queue-Token': token },
      auth(userId)), extraTags),
  });
}

export function sendReserve(req) {
  const res = http.request(req.method, req.url, req.body, req.params);
  const code = res.status >= 400 ? errorCode(res) : null;
  // A lock timeout is known by behaviour on any target: a refusal that came at or after the lock wait and
  // is a 5xx, unanswered, or names no error (a bare 500 says nothing of a lock); or an answer that names it
  // (LOCK_TIMEOUT is a 409 by contract). A refusal naming another error (SEAT_TAKEN) is taken at its word:
  // the client's time includes queueing the service's lock wait does not. Answered 5xx: the R-RACE-4 defect.
  const late = !isOk('reserve', res.status) && res.timings.duration >= LOCK_WAIT_MS && (res.status >= 500 || !code);
  if (code === 'LOCK_TIMEOUT' || late || (res.status >= 500 && /lock/i.test(String(res.body)))) {
    lockTimeouts.add(1, Object.assign({ status: String(res.status), by: code === 'LOCK_TIMEOUT' ? 'code' : 'time' },
      req.params.tags)); // endpoint, name, tc, seat
  }
  return { res, body: json(res), code };
}

export function reserve(userId, token, seatIds, key, name, extraTags) {
  return sendReserve(reserveRequest(userId, token, seatIds, key, name, extraTags));
}

// API-4: pay for a reservation.
export function pay(userId, reservationId, amount, key, extraTags) {
  const res = send('pay', { reservationId: reservationId, amount: amount, userId: userId },
    params('API-4', 'pay', Object.assign({ 'Idempotency-Key': key || uuid() }, auth(userId)), extraTags));
  return { res, body: json(res) };
}

// Watch a payment (GET /api/v1/payments/{id}) until COMPLETED or FAILED; emits the saga time
// measured from `startMs` (the payment request). Returns {status, reason, seconds} (status null: gave up).
export function watchPayment(userId, paymentId, startMs, extraTags, intervalS, limitS) {
  intervalS = intervalS || parseFloat(__ENV.WATCH_INTERVAL_S || '0.25');
  limitS = limitS || parseFloat(__ENV.WATCH_LIMIT_S || '120');
  while (true) {
    const res = send('payment_read', { paymentId: paymentId, userId: userId },
      params('API-PAY-GET', 'pay-get', auth(userId), extraTags));
    const body = json(res);
    const seconds = (Date.now() - startMs) / 1000;
    const status = body ? paymentStatus(body.status) : null;
    if (status === 'COMPLETED' || status === 'FAILED') {
      const reason = body.failureReason || '';
      sagaTime.add(seconds, Object.assign({ status: status, reason: reason }, extraTags || {}));
      if (reason !== 'INSUFFICIENT_POINTS') sagaCompleted.add(status === 'COMPLETED', extraTags);
      return { status: status, reason: reason, seconds: seconds };
    }
    if (seconds + intervalS > limitS) {
      sagaUnfinished.add(1, extraTags);
      sagaCompleted.add(false, extraTags);
      return { status: null, reason: body ? body.status : 'NO_ANSWER', seconds: seconds };
    }
    sleep(intervalS);
  }
}

// The reservation as the service reports it (GET /api/v1/reservations/by-id/{id}); null if not readable.
export function http_get_reservation(userId, reservationId) {
  const res = send('reservation_read', { reservationId: reservationId, userId: userId },
    params('API-RES-GET', 'reservation-get', auth(userId)));
  return isOk('reservation_read', res.status) ? json(res) : null;
}

// API-5: the concert list.
export function concerts(extraTags) {
  return send('concerts', {}, params('API-5', 'concerts', {}, extraTags));
}

// API-6: charge points.
export function charge(userId, amount, extraTags) {
  const key = uuid();
  const res = send('charge', { amount: amount, userId: String(userId), key: key },
    params('API-6', 'charge', Object.assign({ 'Idempotency-Key': key }, auth(userId)), extraTags));
  return { res, body: json(res) };
}

// ENTERED queue tokens for `users` (set-up of race and saga, whose users must all hold a reservation
// at once while a queue target admits only its capacity). Tokens are taken on queue targets of their
// own, from `firstTarget` up: a target that answers WAITING is full (capacity, or earlier runs' tokens
// still active), so the user moves to the next target. Never touches the concert's own queue.
export function enteredTokens(users, firstTarget, maxTargets) {
  maxTargets = maxTargets || 2000;
  let target = firstTarget;
  return users.map((userId) => {
    for (let tries = 0; tries < maxTargets; tries++) {
      const res = send('token', { concertId: target, userId: userId },
        params('API-1', 'setup-token', Object.assign({ 'Idempotency-Key': uuid() }, auth(userId))));
      const body = json(res);
      if (body && body.status === 'ENTERED') return body.token;
      if (res.status >= 300 || !body) {
        throw new Error(`API-1 for user ${userId} on target ${target} answered ${res.status}: ${String(res.body).slice(0, 200)}`);
      }
      target += 1;
    }
    throw new Error(`no queue target from ${firstTarget} admitted user ${userId}`);
  });
}

// Users ENTERED at once for a stage that needs them all (race, saga): {users, tokens}, index for index.
// private_targets: enteredTokens above. wait: each user takes a token on the concert's queue and polls every
// 3 s until ENTERED, for up to ADMISSION_WAIT_S — the target's own pace (a raised capacity, or a queue that
// admits everyone in time); a target that admits fewer stops the set-up with what it saw. shared_token: the
// first user waits so, and every index shares that user and token (fresh Idempotency-Keys each request).
export function admittedUsers(users, firstTarget) {
  if (ADMISSION === 'private_targets') return { users: users, tokens: enteredTokens(users, firstTarget) };
  if (ADMISSION === 'shared_token') {
    const token = waitAdmitted([users[0]])[0];
    return { users: users.map(() => users[0]), tokens: users.map(() => token) };
  }
  if (ADMISSION === 'wait') return { users: users, tokens: waitAdmitted(users) };
  throw new Error(`ADMISSION must be private_targets, wait or shared_token, not ${ADMISSION}`);
}

function waitAdmitted(users) {
  const tokens = users.map((userId) => {
    const { res, body } = issueToken(userId, { name: 'setup-token' });
    if (!body || !body.token) {
      throw new Error(`API-1 for user ${userId} answered ${res.status}: ${String(res.body).slice(0, 200)}`);
    }
    return { token: body.token, entered: body.status === 'ENTERED', userId: userId };
  });
  const start = Date.now();
  while (true) {
    const waiting = tokens.filter((t) => !t.entered);
    if (waiting.length === 0) break;
    const waited = (Date.now() - start) / 1000;
    if (waited > ADMISSION_WAIT_S) {
      throw new Error(`the target admitted ${tokens.length - waiting.length} of ${tokens.length} users within ` +
        `${ADMISSION_WAIT_S} s (ADMISSION=wait); it should admit them all (raise its capacity for the stage, or ` +
        `use ADMISSION=shared_token)`);
    }
    sleep(3);
    waiting.forEach((t) => {
      const { body } = pollToken(t.token, { name: 'setup-poll' }, t.userId);
      if (body && body.status === 'ENTERED') t.entered = true;
    });
  }
  return tokens.map((t) => t.token);
}

// A shared-token user is done, as a real user would be: reserve `seat`, pay for it and watch the payment end,
// which frees its place in the queue (the plan: a payment ending ends the user's turn). Without this the
// stage's token would hold a place until its TTL, and a target with one global queue would start the next
// stage with a place taken. Returns the payment's end status, or why it could not.
export function releasePlace(userId, token, seat) {
  const r = reserve(userId, token, [seat], uuid(), 'release');
  const rid = r.body && r.body.reservationId;
  if (!isOk('reserve', r.res.status) || !rid) return `reserve answered ${r.res.status}`;
  const amount = r.body.amount || r.body.totalAmount;
  const start = Date.now();
  const p = pay(userId, rid, amount, uuid(), { name: 'release' });
  if (!isOk('pay', p.res.status) || !p.body || !p.body.paymentId) return `pay answered ${p.res.status}`;
  const end = watchPayment(userId, p.body.paymentId, start, { case: 'release' }, 0.5, 60);
  return end.status || `payment not terminal after ${end.seconds.toFixed(0)} s`;
}

// Open the VU's keep-alive connection before a barrier, so the released request does not pay for it.
export function warmUp() {
  http.get(`${BASE_URL}/health`, params('ADMIN', 'warmup'));
}

// Sleep until the wall-clock instant `atMs` (the common release instant of a barrier).
export function sleepUntil(atMs) {
  let left = atMs - Date.now();
  while (left > 0) {
    sleep(Math.min(left, 1000) / 1000);
    left = atMs - Date.now();
  }
}

export function checkTarget() {
  const res = http.get(`${BASE_URL}/health`, params('ADMIN', 'health'));
  if (res.status !== 200) throw new Error(`target ${BASE_URL} is not healthy: /health answered ${res.status}`);
}
