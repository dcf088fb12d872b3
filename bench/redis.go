package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	lmxredis "github.com/lmx-go/lmx/redis"
	"github.com/redis/go-redis/v9"
)

// redisTTL is the locks' expiry; cycles are far shorter.
const redisTTL = 10 * time.Second

// redisRetry is how often a waiting Redis lock polls: Redis locks have no
// hand-off, waiters poll.
const redisRetry = time.Millisecond

// The lock options, built once: read-only, so all workers share them.
var (
	redislockOptions = &redislock.Options{RetryStrategy: redislock.LinearBackoff(redisRetry)}
	// redsync's defaults: 32 tries, a random 50–250 ms delay between them;
	// with 20 waiters on one key that gives up, so try until ctx ends.
	redsyncOptions = []redsync.Option{redsync.WithExpiry(redisTTL), redsync.WithTries(1 << 30),
		redsync.WithRetryDelay(redisRetry)}
)

// redisServer is a redis-server on 127.0.0.1 with a free port, no
// persistence, and a go-redis client of it.
type redisServer struct {
	ch  *child
	rdb *redis.Client
}

func startRedis(ctx context.Context) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("%w: redis-server not installed", errUnavailable)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no")
	rdb := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), PoolSize: 256})
	ch, err := startChild(ctx, cmd, "", nil, func() error {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		return rdb.Ping(pctx).Err()
	})
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return &redisServer{ch: ch, rdb: rdb}, nil
}

func (s *redisServer) rss() string { return s.ch.rss() + " (redis-server)" }

func (s *redisServer) close() {
	s.rdb.Close()
	s.ch.stop()
}

// freePort asks the kernel for a free port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// redisService is a redisServer and the worker, shared by all, that locks
// through it.
type redisService struct {
	*redisServer
	w worker
}

func startRedisService(ctx context.Context, newWorker func(*redis.Client) worker) (running, error) {
	s, err := startRedis(ctx)
	if err != nil {
		return nil, err
	}
	return &redisService{redisServer: s, w: newWorker(s.rdb)}, nil
}

func (s *redisService) newWorker(context.Context, int) (worker, error) { return s.w, nil }

func startRedislock(ctx context.Context, _ config) (running, error) {
	return startRedisService(ctx, func(rdb *redis.Client) worker { return redislockWorker{redislock.New(rdb)} })
}

type redislockWorker struct{ c *redislock.Client }

func (w redislockWorker) cycle(ctx context.Context, key string) (time.Duration, error) {
	t := time.Now()
	l, err := w.c.Obtain(ctx, key, redisTTL, redislockOptions)
	if err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, l.Release(ctx)
}

func (redislockWorker) close() {}

func startRedsync(ctx context.Context, _ config) (running, error) {
	return startRedisService(ctx, func(rdb *redis.Client) worker { return redsyncWorker{redsync.New(goredis.NewPool(rdb))} })
}

type redsyncWorker struct{ rs *redsync.Redsync }

func (w redsyncWorker) cycle(ctx context.Context, key string) (time.Duration, error) {
	m := w.rs.NewMutex(key, redsyncOptions...)
	t := time.Now()
	if err := m.LockContext(ctx); err != nil {
		return 0, err
	}
	d := time.Since(t)
	_, err := m.UnlockContext(ctx)
	return d, err
}

func (redsyncWorker) close() {}

// lmxRedisService is lmx's Redis backend on a redisServer, with a Locker
// and a go-redis client per worker, as separate processes would have.
type lmxRedisService struct{ *redisServer }

func startLMXRedis(ctx context.Context, _ config) (running, error) {
	s, err := startRedis(ctx)
	if err != nil {
		return nil, err
	}
	return lmxRedisService{s}, nil
}

func (s lmxRedisService) newWorker(ctx context.Context, _ int) (worker, error) {
	rdb := redis.NewClient(&redis.Options{Addr: s.rdb.Options().Addr, PoolSize: 4})
	lk, err := lmxredis.New(ctx, rdb, "lmxbench:")
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return &lmxRedisWorker{lmxWorker: lmxWorker{l: lk}, rdb: rdb}, nil
}

// lmxRedisWorker is an lmxWorker whose Locker and client are its own.
type lmxRedisWorker struct {
	lmxWorker
	rdb *redis.Client
}

func (w *lmxRedisWorker) close() {
	w.l.Close()
	w.rdb.Close()
}
