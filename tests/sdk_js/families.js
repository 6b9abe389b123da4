// Envoi's management API families through Mailgun's official JavaScript SDK (mailgun.js), unchanged.
// Run by tests/integration/api/test_mailgun_js.py, which then checks the effects in the database and
// the sink. Input from the environment:
//   MG_URL, MG_KEY         the API's base URL and an admin key of the account
//   MG_DOMAIN              an existing verified sending domain of the account
//   MG_TO, MG_MESSAGE_ID   the recipient and the h:Message-Id of the message sent
//   MG_NEW_DOMAIN          a domain to create and change (left in place for the test to check)
//   MG_GONE_DOMAIN         a domain to create, read and delete
//   MG_WEBHOOK_URL         the URL of the domain webhook to create
//   MG_SUBACCOUNT          the name of the subaccount to create (left disabled)
// Prints one JSON line per call: {"call", "ok", "shape" (the result's keys), "result"} or, for a call
// that failed, {"call", "ok": false, "status", "message"}. Exits 1 when a call fails unexpectedly (or an
// expected failure does not happen), so the test's failure names the call.
'use strict';

const FormData = require('form-data');
const Mailgun = require('mailgun.js');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const domain = env('MG_DOMAIN');
const fresh = env('MG_NEW_DOMAIN');
const gone = env('MG_GONE_DOMAIN');
const mg = new Mailgun(FormData).client({username: 'api', key: env('MG_KEY'), url: env('MG_URL')});

let failures = 0;
const shapeOf = (value) => (value && typeof value === 'object' && !Array.isArray(value)
  ? Object.keys(value).sort() : Array.isArray(value) ? `array(${value.length})` : typeof value);
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

// call NAME FN: the call must succeed; returns its result (undefined when it failed).
async function call(name, fn) {
  try {
    const result = await fn();
    print({call: name, ok: true, shape: shapeOf(result), result});
    return result;
  } catch (e) {
    failures += 1;
    print({call: name, ok: false, status: e.status, message: e.message, details: e.details});
    return undefined;
  }
}

// refused NAME STATUS FN: the call must fail with STATUS (Mailgun's error, as the SDK raises it).
async function refused(name, status, fn) {
  try {
    const result = await fn();
    failures += 1;
    print({call: name, ok: true, unexpected: true, shape: shapeOf(result), result});
  } catch (e) {
    if (e.status !== status) failures += 1;
    print({call: name, ok: false, expected: status, status: e.status, message: e.message, details: e.details});
  }
}

(async () => {
  const dayAgo = new Date(Date.now() - 86400e3);
  const onDomain = {AND: [{attribute: 'domain', comparator: '=', values: [{label: domain, value: domain}]}]};

  // messages and events
  await call('messages.create', () => mg.messages.create(domain, {
    from: `JS SDK <sdk@${domain}>`, to: [env('MG_TO')], subject: 'Through mailgun.js', text: 'hello from node',
    html: '<p>hello from node</p>', 'o:tag': ['js-sdk'], 'h:Message-Id': `<${env('MG_MESSAGE_ID')}>`,
    'v:order': '42'}));
  await call('events.get', () => mg.events.get(domain, {'message-id': env('MG_MESSAGE_ID'), event: 'accepted',
    ascending: 'yes', limit: 10}));
  await refused('events.get(unknown filter)', 400, () => mg.events.get(domain, {colour: 'blue'}));

  // domains: create, list, get, update, connection, tracking host prefix, DKIM, verify
  await call('domains.create', () => mg.domains.create({name: fresh, spam_action: 'tag', wildcard: true,
    dkim_key_size: 1024}));
  await call('domains.list', () => mg.domains.list({limit: 100}));
  await call('domains.get', () => mg.domains.get(fresh));
  await call('domains.update', () => mg.domains.update(fresh, {spam_action: 'block', web_scheme: 'https'}));
  await call('domains.updateConnection', () => mg.domains.updateConnection(fresh,
    {require_tls: true, skip_verification: false}));
  await call('domains.getConnection', () => mg.domains.getConnection(fresh));
  await call('domains.updateWebPrefix', () => mg.domains.updateWebPrefix(fresh, {webPrefix: 'links'}));
  await call('domains.updateDKIMSelector', () => mg.domains.updateDKIMSelector(fresh, {dkimSelector: 'js2026'}));
  await call('domains.updateDKIMAuthority', () => mg.domains.updateDKIMAuthority(fresh, {self: true}));
  await call('domains.domainTracking.getTracking', () => mg.domains.domainTracking.getTracking(fresh));
  await call('domains.domainTracking.updateTracking', () => mg.domains.domainTracking.updateTracking(fresh,
    'open', {active: true}));
  await call('domains.verify', () => mg.domains.verify(fresh));
  await refused('domains.get(unknown)', 404, () => mg.domains.get(`nope-${gone}`));

  await call('domains.create(to delete)', () => mg.domains.create({name: gone, dkim_key_size: 1024}));
  await call('domains.get(to delete)', () => mg.domains.get(gone));
  await call('domains.destroy', () => mg.domains.destroy(gone));
  await refused('domains.get(deleted)', 404, () => mg.domains.get(gone));

  // tags and analytics (the SDK sends whole seconds: end a minute ahead so the message above is inside)
  const later = new Date(Date.now() + 60e3);
  await call('domains.domainTags.list', () => mg.domains.domainTags.list(domain, {limit: 10}));
  await call('tags.list', () => mg.tags.list({pagination: {sort: 'tag:asc', limit: 10}}));
  await call('tags.limits', () => mg.tags.limits());
  await call('metrics.getAccount', () => mg.metrics.getAccount({start: dayAgo, end: later, resolution: 'day',
    dimensions: ['time'], metrics: ['accepted_count', 'delivered_count'], include_aggregates: true,
    filter: onDomain}));
  await call('metrics.getAccountUsage', () => mg.metrics.getAccountUsage({dimensions: ['time'],
    metrics: ['processed_count'], duration: '1d'}));
  await refused('metrics.getAccount(unknown metric)', 400, () => mg.metrics.getAccount({metrics: ['nope_count']}));
  await call('logs.list', () => mg.logs.list({start: dayAgo, end: later, events: ['accepted'],
    pagination: {sort: 'timestamp:asc', limit: 10}, filter: onDomain}));
  await call('stats.getDomain', () => mg.stats.getDomain(domain, {event: ['accepted'], duration: '1d'}));

  // domain webhooks
  await call('webhooks.create', () => mg.webhooks.create(domain, 'delivered', env('MG_WEBHOOK_URL')));
  await call('webhooks.list', () => mg.webhooks.list(domain, {}));
  await call('webhooks.get', () => mg.webhooks.get(domain, 'delivered'));

  // subaccounts: made, listed, read, disabled, enabled, disabled again
  const made = await call('subaccounts.create', () => mg.subaccounts.create(env('MG_SUBACCOUNT')));
  const id = made && made.subaccount && made.subaccount.id;
  if (id) {
    await call('subaccounts.list', () => mg.subaccounts.list({limit: 100}));
    await call('subaccounts.get', () => mg.subaccounts.get(id));
    await call('subaccounts.disable', () => mg.subaccounts.disable(id));
    await call('subaccounts.enable', () => mg.subaccounts.enable(id));
    await call('subaccounts.disable(again)', () => mg.subaccounts.disable(id));
  }

  // errors: a wrong key is Mailgun's 401
  const stranger = new Mailgun(FormData).client({username: 'api', key: 'key-not-a-real-one', url: env('MG_URL')});
  await refused('domains.list(wrong key)', 401, () => stranger.domains.list());

  process.exit(failures ? 1 : 0);
})().catch((e) => {
  print({call: 'script', ok: false, message: String(e && e.stack || e)});
  process.exit(1);
});
