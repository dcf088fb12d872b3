// Drives the live-mutex 0.2.25 Node client against a broker at
// LMX_UDS (a Unix socket path). Usage: node scenario.js NAME.
// Prints one JSON object per result line; the Go test asserts them.
'use strict';
const {Client, Broker} = require('live-mutex');

const uds = process.env.LMX_UDS;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const client = async (opts) => {
  const c = new Client(Object.assign({udsPath: uds}, opts || {}));
  c.emitter.on('error', () => {});
  c.emitter.on('warning', () => {});
  await c.connect();
  return c;
};

const scenarios = {
  async basic() {
    const c = await client();
    const l = await c.acquire('basic');
    out({acquired: l.acquired, id: l.id, key: l.key});
    const r = await c.release('basic', {id: l.id});
    out({unlocked: r.unlocked});
    c.close();
  },
  async fifo() {
    const c = await client();
    const h = await c.acquire('fifo');
    const order = [];
    const ps = [];
    for (let i = 0; i < 5; i++) {
      ps.push(c.acquire('fifo').then(async (l) => { order.push(i); await c.release('fifo', {id: l.id}); }));
      await sleep(20); // each queued before the next
    }
    await c.release('fifo', {id: h.id});
    await Promise.all(ps);
    out({order});
    c.close();
  },
  async semaphore() {
    const c = await client();
    let n = 0, peak = 0;
    const ps = [];
    for (let i = 0; i < 12; i++) {
      ps.push(c.acquire('sem', {max: 3}).then(async (l) => {
        n++; peak = Math.max(peak, n);
        await sleep(20);
        n--;
        await c.release('sem', {id: l.id});
      }));
    }
    await Promise.all(ps);
    out({peak, done: ps.length});
    c.close();
  },
  async wrongid() {
    const c = await client();
    const l = await c.acquire('wrong');
    let err = null;
    try { await c.release('wrong', {id: 'not-the-id', unlockRequestTimeout: 2000}); } catch (e) { err = String(e && (e.message || e)); }
    out({refused: err !== null, err});
    const r = await c.release('wrong', {id: l.id});
    out({unlocked: r.unlocked});
    c.close();
  },
  async force() {
    const a = await client(), b = await client();
    await a.acquire('force');
    await b.release('force', {force: true});
    const l = await b.acquire('force', {lockRequestTimeout: 2000});
    out({acquired: l.acquired});
    await b.release('force', {id: l.id});
    a.close(); b.close();
  },
  async ttl() {
    const a = await client(), b = await client();
    await a.acquire('ttl', {ttl: 300});
    const t0 = Date.now();
    const l = await b.acquire('ttl', {lockRequestTimeout: 5000});
    out({acquired: l.acquired, waitedMs: Date.now() - t0});
    await b.release('ttl', {id: l.id});
    a.close(); b.close();
  },
  async disconnect() {
    const a = await client(), b = await client();
    await a.acquire('disc');
    await b.acquire('other');
    const p = b.acquire('disc', {lockRequestTimeout: 5000});
    await sleep(50);
    a.close();
    const l = await p;
    out({acquired: l.acquired});
    await b.release('disc', {id: l.id});
    b.close();
  },
  async contend() {
    // The Go test holds "gk"; this waits for it, holds it 200 ms, releases.
    const c = await client();
    out({asking: true});
    const l = await c.acquire('gk', {lockRequestTimeout: 10000});
    out({granted: true, id: l.id});
    await sleep(200);
    await c.release('gk', {id: l.id});
    out({released: true});
    c.close();
  },
  async bench() {
    // live-mutex's headline: 10,000 cycles, 20 in flight, one key.
    const cycles = Number(process.env.LMX_CYCLES || 10000), inflight = 20;
    const c = await client({lockRequestTimeout: 20000});
    const run = async () => {
      let started = 0, done = 0;
      const t0 = process.hrtime.bigint();
      await new Promise((resolve, reject) => {
        const one = () => {
          if (started >= cycles) return;
          started++;
          c.acquire('bench').then((l) => c.release('bench', {id: l.id})).then(() => {
            if (++done === cycles) resolve(); else one();
          }, reject);
        };
        for (let i = 0; i < inflight; i++) one();
      });
      return Number(process.hrtime.bigint() - t0) / 1e9;
    };
    await run(); // warm-up
    const secs = await run();
    out({cycles, seconds: secs, perSecond: Math.round(cycles / secs)});
    c.close();
  },
  async broker() {
    // live-mutex's own broker on LMX_UDS, for the benchmark's baseline.
    const b = new Broker({udsPath: uds});
    await b.ensure();
    out({ready: true});
  },
};

const name = process.argv[2];
if (!scenarios[name]) { console.error('unknown scenario ' + name); process.exit(2); }
const timer = setTimeout(() => { out({error: 'timeout'}); process.exit(3); }, Number(process.env.LMX_TIMEOUT_MS || 30000));
if (name === 'broker') clearTimeout(timer);
scenarios[name]().then(() => { if (name !== 'broker') { clearTimeout(timer); setTimeout(() => process.exit(0), 10); } },
  (e) => { out({error: String(e && (e.stack || e.message || e))}); process.exit(1); });
