// A real OpenID Connect provider for the tests: panva's `oidc-provider`
// (the certified Node.js implementation) with test users, non-interactive
// login and consent, and a fault injector that forges ID tokens the way an
// attacker would, so the broker's validation is tested against real flows.
//
// env:
//   IDP_DIR            directory whose node_modules holds oidc-provider
//   IDP_PORT           port on 127.0.0.1 (required)
//   IDP_CLIENT_ID      confidential client id      (default pam)
//   IDP_CLIENT_SECRET  its secret                  (default pam-test-secret)
//   IDP_REDIRECT_URIS  comma-separated redirect URIs of that client
//   IDP_AUTO_LOGIN     1 (default): log in as login_hint (or alice) without a form
//   IDP_ISSUER         the issuer URL, when the IdP is reached through something else
//                      (the fault suite's proxy); default http://127.0.0.1:IDP_PORT
//
// Test control (loopback only):
//   POST /test/forge {"mode": M}  the next token response carries an ID token forged by M:
//     bad-signature | alg-none | hs256-pubkey | expired | wrong-aud | wrong-iss |
//     unknown-kid | wrong-nonce | future-iat | rotate-key (a new key, published in the JWKS)
//   POST /test/amr {"user": U, "amr": [...]}  change the methods U logs in with
//   POST /test/rotate  a key rotation: from now on every ID token is signed by a new key,
//                      and the JWKS publishes that key only (the old one is gone)
//   GET  /test/stats   {"jwks": N}: how many times the JWKS was fetched
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const IDP_DIR = process.env.IDP_DIR || process.cwd();
const require = createRequire(path.join(IDP_DIR, 'package.json'));
const { default: Provider } = await import(pathToFileURL(require.resolve('oidc-provider')).href);

const PORT = Number(process.env.IDP_PORT);
const ISSUER = process.env.IDP_ISSUER || `http://127.0.0.1:${PORT}`;
const AUTO = (process.env.IDP_AUTO_LOGIN ?? '1') !== '0';
const CLIENT_ID = process.env.IDP_CLIENT_ID || 'pam';

// Users, their groups and how they authenticate (amr). alice and carol use a
// second factor, bob a password only. Every email is verified
// (email_verified: true) except unverified's (false) and silent's (no claim).
const USERS = {
  alice: { email: 'alice@example.test', name: 'Alice Admin', groups: ['pam-admins', 'engineers'], amr: ['pwd', 'otp'] },
  bob: { email: 'bob@example.test', name: 'Bob Builder', groups: ['engineers'], amr: ['pwd'] },
  carol: { email: 'carol@example.test', name: 'Carol SRE', groups: ['sre', 'engineers'], amr: ['pwd', 'hwk'] },
  dave: { email: 'dave@example.test', name: 'Dave Analyst', groups: ['analysts'], amr: ['pwd', 'otp'] },
  erin: { email: 'erin@example.test', name: 'Erin Auditor', groups: ['auditors'], amr: ['pwd', 'otp'] },
  noemail: { name: 'No Email', groups: [], amr: ['pwd', 'otp'] },
  // email_verified false, and absent (as some IdPs never send it).
  unverified: { email: 'unverified@example.test', name: 'Una Verified', groups: ['engineers'], amr: ['pwd', 'otp'], verified: false },
  silent: { email: 'silent@example.test', name: 'Sil Ent', groups: ['engineers'], amr: ['pwd', 'otp'], verified: null },
};

function rsaJwk(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}
const SIGNING = rsaJwk('test-rs256');
const extraPublicKeys = [];
// After POST /test/rotate: the key every ID token is signed with, and the only one published.
let rotated = null;
let jwksFetches = 0;
const publicPart = ({ d, p, q, dp, dq, qi, ...pub }) => pub;

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: process.env.IDP_CLIENT_SECRET || 'pam-test-secret',
    redirect_uris: (process.env.IDP_REDIRECT_URIS || 'http://127.0.0.1:8080/auth/callback').split(','),
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    userinfo: { enabled: true },
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    // acr/amr/auth_time ride with the openid scope so they reach the ID token.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  ttl: { AccessToken: 600, IdToken: 600, AuthorizationCode: 60, DeviceCode: 300, Interaction: 600, Session: 3600, Grant: 3600 },
  async findAccount(ctx, id) {
    const u = USERS[id];
    if (!u) return undefined;
    return {
      accountId: id,
      async claims() {
        const c = { sub: id, name: u.name, preferred_username: id, groups: u.groups };
        if (u.email) c.email = u.email;
        if (u.email && u.verified !== null) c.email_verified = u.verified ?? true;
        return c;
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  jwks: { keys: [SIGNING] },
  renderError(ctx, out) { ctx.type = 'json'; ctx.body = out; },
});

async function grantConsent(details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return details.grantId ? {} : { grantId };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    let account;
    if (action === 'login' && req.method === 'POST') {
      account = new URLSearchParams(await readBody(req)).get('username');
    } else if (AUTO) {
      account = USERS[params.login_hint] ? params.login_hint : 'alice';
    } else {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><title>Test IdP</title><h1>Test IdP</h1>
<form method="post" action="/interaction/${uid}/login">
<label>Username <input name="username" id="username" value=""></label>
<button type="submit" id="login">Sign in</button></form>`);
      return;
    }
    if (!USERS[account]) {
      return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'unknown test user' });
    }
    return provider.interactionFinished(req, res,
      { login: { accountId: account, amr: USERS[account].amr } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'consent') {
    return provider.interactionFinished(req, res, { consent: await grantConsent(details) }, { mergeWithLastSubmission: true });
  }
  res.writeHead(400, { 'content-type': 'text/plain' });
  res.end(`unsupported prompt ${prompt.name}`);
}

// ---- forging ---------------------------------------------------------------
let forgeMode = null;
const b64u = (x) => Buffer.from(x).toString('base64url');

function forge(idToken, mode) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  const now = Math.floor(Date.now() / 1000);
  const sign = (hdr, pl, jwk) => {
    const data = `${b64u(JSON.stringify(hdr))}.${b64u(JSON.stringify(pl))}`;
    const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
    return `${data}.${crypto.sign('sha256', Buffer.from(data), key).toString('base64url')}`;
  };
  switch (mode) {
    case 'bad-signature': {
      const [a, b, s] = idToken.split('.');
      const sig = Buffer.from(s, 'base64url');
      sig[10] ^= 0xff;
      return `${a}.${b}.${sig.toString('base64url')}`;
    }
    case 'alg-none':
      return `${b64u(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64u(JSON.stringify(payload))}.`;
    case 'hs256-pubkey': {
      // The classic confusion: HMAC keyed with the IdP's *public* key.
      const pem = crypto.createPublicKey({ key: SIGNING, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
      const data = `${b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: header.kid }))}.${b64u(JSON.stringify(payload))}`;
      return `${data}.${crypto.createHmac('sha256', pem).update(data).digest('base64url')}`;
    }
    case 'expired':
      return sign(header, { ...payload, iat: now - 7200, exp: now - 3600 }, SIGNING);
    case 'future-iat':
      return sign(header, { ...payload, iat: now + 3600, exp: now + 7200 }, SIGNING);
    case 'wrong-aud':
      return sign(header, { ...payload, aud: 'someone-else' }, SIGNING);
    case 'wrong-iss':
      return sign(header, { ...payload, iss: 'http://evil.example' }, SIGNING);
    case 'wrong-nonce':
      return sign(header, { ...payload, nonce: 'not-the-nonce' }, SIGNING);
    case 'unknown-kid': {
      const stranger = rsaJwk('unknown-kid');
      return sign({ ...header, kid: stranger.kid }, payload, stranger);
    }
    case 'rotate-key': {
      const next = rsaJwk(`rotated-${Date.now()}`);
      const { d, p: pp, q, dp, dq, qi, ...pub } = next;
      extraPublicKeys.push(pub);
      return sign({ ...header, kid: next.kid }, payload, next);
    }
    default:
      throw new Error(`unknown forge mode ${mode}`);
  }
}

// Rewrites a JSON response body on its way out.
function rewriteJson(res, edit) {
  const write = res.write.bind(res);
  const end = res.end.bind(res);
  const chunks = [];
  res.write = (chunk) => { chunks.push(Buffer.from(chunk)); return true; };
  res.end = (chunk, ...rest) => {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    let body = Buffer.concat(chunks).toString();
    try { body = JSON.stringify(edit(JSON.parse(body))); } catch (e) { /* not JSON: leave it */ }
    if (!res.headersSent) res.setHeader('content-length', Buffer.byteLength(body));
    write(body);
    return end();
  };
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const m = req.url.match(/^\/interaction\/([^/?]+)(?:\/(login))?/);
    if (m) return await interaction(req, res, m[1], m[2]);
    if (req.url === '/healthz') { res.writeHead(200); return res.end('ok'); }
    if (req.url === '/test/forge' && req.method === 'POST') {
      forgeMode = JSON.parse(await readBody(req)).mode;
      res.writeHead(204); return res.end();
    }
    if (req.url === '/test/amr' && req.method === 'POST') {
      const { user, amr } = JSON.parse(await readBody(req));
      USERS[user].amr = amr;
      res.writeHead(204); return res.end();
    }
    if (req.url === '/test/rotate' && req.method === 'POST') {
      rotated = rsaJwk(`rotated-${Date.now()}`);
      res.writeHead(204); return res.end();
    }
    if (req.url === '/test/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ jwks: jwksFetches }));
    }
    if (req.url.startsWith('/token') && rotated && !forgeMode) {
      const key = rotated;
      rewriteJson(res, (body) => {
        if (body.id_token) {
          const [h, p] = body.id_token.split('.');
          const header = { ...JSON.parse(Buffer.from(h, 'base64url')), kid: key.kid };
          const data = `${b64u(JSON.stringify(header))}.${p}`;
          const signer = crypto.createPrivateKey({ key, format: 'jwk' });
          body.id_token = `${data}.${crypto.sign('sha256', Buffer.from(data), signer).toString('base64url')}`;
        }
        return body;
      });
    }
    if (req.url.startsWith('/jwks')) jwksFetches += 1;
    if (req.url.startsWith('/jwks') && rotated) {
      rewriteJson(res, () => ({ keys: [publicPart(rotated), ...extraPublicKeys] }));
    }
    if (req.url.startsWith('/token') && forgeMode) {
      const mode = forgeMode;
      rewriteJson(res, (body) => {
        if (body.id_token) { body.id_token = forge(body.id_token, mode); forgeMode = null; }
        return body;
      });
    }
    if (req.url.startsWith('/jwks') && extraPublicKeys.length && !rotated) {
      rewriteJson(res, (body) => ({ keys: [...body.keys, ...extraPublicKeys] }));
    }
    return callback(req, res);
  } catch (e) {
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String((e && e.stack) || e));
  }
});
server.listen(PORT, '127.0.0.1', () => console.log(`test IdP on ${ISSUER} pid=${process.pid}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
