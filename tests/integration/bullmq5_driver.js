// Drives Node BullMQ 5 for the queue tests: one JSON command per stdin line, one JSON reply per stdout line.
// Run with NODE_PATH pointing at a node_modules that holds bullmq@5.
'use strict';
const readline = require('readline');
const { Queue, Worker, FlowProducer } = require('bullmq');

const [url, queueName] = process.argv.slice(2);
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };
const queue = new Queue(queueName, { connection });
let worker = null;
let release = null;
const held = new Promise(resolve => { release = resolve; });
let processed = 0;

const sleep = ms => new Promise(r => setTimeout(r, ms));
async function until(fn, what, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function processor(job) {
  if (job.name === 'fail') throw new Error(`boom ${job.id}`);
  if (job.name === 'hold') await held;
  processed += 1;
  return 'ok';
}

function startWorker(name, concurrency = 1) {
  worker = new Worker(queueName, processor, { connection, concurrency, name, drainDelay: 1 });
  worker.on('error', () => {});
  return worker.waitUntilReady();
}

async function populate() {
  const keep = { removeOnComplete: { count: 3 }, removeOnFail: { count: 500 } };
  for (let i = 0; i < 6; i++) await queue.add('ok', { i }, keep);
  for (let i = 0; i < 2; i++) await queue.add('fail', { i }, { ...keep, attempts: 2 });
  await startWorker('w5');
  await until(async () => {
    const c = await queue.getJobCounts('completed', 'failed');
    return c.completed === 3 && c.failed === 2;
  }, 'completed and failed jobs');
  await queue.add('hold', {}, keep);
  await until(async () => (await queue.getJobCounts('active')).active === 1, 'a held active job');
  for (let i = 0; i < 4; i++) await queue.add('wait', { i });
  for (let i = 0; i < 2; i++) await queue.add('later', { i }, { delay: 3600000 });
  for (let i = 0; i < 3; i++) await queue.add('prio', { i }, { priority: 5 + i });
  const fp = new FlowProducer({ connection });
  await fp.add({ name: 'parent', queueName, data: {}, children: [{ name: 'child', queueName: `${queueName}-children`, data: {} }] });
  await fp.close();
  return 'ok';
}

const ops = {
  populate,
  counts: () => queue.getJobCounts(),
  pause: async () => { await queue.pause(); return 'ok'; },
  resume: async () => { await queue.resume(); return 'ok'; },
  add: async (c) => (await queue.add(c.name, c.data || {}, c.opts || {})).id,
  worker: async (c) => { await startWorker(c.name, c.concurrency || 1); return 'ok'; },
  processed: async () => processed,
  failed: async () => (await queue.getFailed()).map(j => j.id),
  retry: async () => { await queue.retryJobs({ state: 'failed' }); return 'ok'; },
  release: async () => { release(); return 'ok'; },
  quit: async () => {
    release();
    if (worker) await worker.close();
    await queue.close();
    return 'bye';
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async line => {
  let reply;
  try {
    const cmd = JSON.parse(line);
    reply = { ok: true, result: await ops[cmd.op](cmd) };
  } catch (e) {
    reply = { ok: false, error: String(e && e.stack || e) };
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
  if (line.includes('"quit"')) process.exit(0);
});
process.stdout.write(JSON.stringify({ ok: true, result: 'ready' }) + '\n');
