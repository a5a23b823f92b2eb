import asyncio
import logging
import signal
import sys

from aixsss_ops.errors import OpsError
from common.settings import load_env_or_exit
from worker.drain import Worker, drain, start
from worker.processor import Processor


async def run(env, processor: Processor) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(
        env.AI_QUEUE_NAME, processor.process,
        {"connection": env.REDIS_URL, "concurrency": env.WORKER_CONCURRENCY, "autorun": False},
    )
    loop_task = start(worker)
    logging.info("worker consuming queue %s with concurrency %d", env.AI_QUEUE_NAME, env.WORKER_CONCURRENCY)
    await stop.wait()
    logging.info("stopping: waiting for active jobs to finish")
    await drain(worker, loop_task)
    logging.info("stopped")


def main() -> None:
    env = load_env_or_exit("worker")
    try:
        processor = Processor(env)
    except OpsError as e:
        print(f"worker: {e.message}", file=sys.stderr)
        raise SystemExit(1) from None
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(env, processor))


main()
