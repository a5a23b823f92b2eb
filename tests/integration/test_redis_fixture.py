import redis


def test_redis_runs_with_noeviction_and_aof(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert r.config_get("appendonly")["appendonly"] == "yes"
