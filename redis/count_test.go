package redis_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/redis"
	"github.com/lmx-go/lmx/redis/internal/redistest"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// trips counts the round trips a go-redis client makes: a command or a
// pipeline each.
type trips struct{ n atomic.Int64 }

func (c *trips) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (c *trips) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		defer c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *trips) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		defer c.n.Add(1)
		return next(ctx, cmds)
	}
}

// calls returns how often Redis has run each command, scripts' own calls
// included, as INFO commandstats counts them.
func calls(t *testing.T, rdb *goredis.Client) map[string]int {
	t.Helper()
	info, err := rdb.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	m := map[string]int{}
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		for kv := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				m[name], _ = strconv.Atoi(v)
			}
		}
	}
	return m
}

// inner is how many commands Redis ran between two calls snapshots,
// besides the scripts themselves and the background's (INFO, pings,
// session refreshes).
func inner(before, after map[string]int) (n int, by map[string]int) {
	by = map[string]int{}
	for c, v := range after {
		switch c {
		case "evalsha", "eval", "info", "ping", "pexpire":
			continue
		}
		if d := v - before[c]; d > 0 {
			by[c] = d
			n += d
		}
	}
	return n, by
}

// countedLocker opens a Locker on srv whose client counts its round trips,
// with a session and rechecks that cannot fire during a test.
func countedLocker(t *testing.T, addr string) (*redis.Locker, *trips) {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	c := &trips{}
	rdb.AddHook(c)
	l, err := redis.New(t.Context(), rdb, "n:", redis.SessionTTL(time.Hour))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	l.SetRecheck(time.Hour)
	// Start the session and load the scripts.
	lease, err := l.Lock(t.Context(), "warm")
	require.NoError(t, err)
	require.NoError(t, lease.Unlock(t.Context()))
	return l, c
}

// The uncontended Lock and Unlock are one script round trip each, and the
// scripts run few commands in Redis: this is what a free key costs Redis.
func TestUncontendedCost(t *testing.T) {
	srv, err := redistest.Start("127.0.0.1:0", "")
	require.NoError(t, err)
	t.Cleanup(func() { srv.Stop() })
	l, c := countedLocker(t, srv.Addr)
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	t.Cleanup(func() { admin.Close() })

	const cycles = 10
	before, sent := calls(t, admin), c.n.Load()
	for range cycles {
		lease, err := l.Lock(t.Context(), "k")
		require.NoError(t, err)
		require.NoError(t, lease.Unlock(t.Context()))
	}
	n, by := inner(before, calls(t, admin))
	assert.Equal(t, int64(2*cycles), c.n.Load()-sent, "round trips")
	assert.LessOrEqual(t, n, maxUncontended*cycles, "commands run by the scripts: %v", by)
}

// A hand-off is one round trip for the waiter, the script that queues it,
// and one for the holder, whose release grants the waiter and tells it by
// one message, on which the waiter's Lock returns.
func TestHandOffCost(t *testing.T) {
	srv, err := redistest.Start("127.0.0.1:0", "")
	require.NoError(t, err)
	t.Cleanup(func() { srv.Stop() })
	a, ca := countedLocker(t, srv.Addr)
	b, cb := countedLocker(t, srv.Addr)
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	t.Cleanup(func() { admin.Close() })

	held, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	before, sentA, sentB := calls(t, admin), ca.n.Load(), cb.n.Load()
	got := make(chan *lmx.Lease, 1)
	go func() {
		l, err := b.Lock(t.Context(), "k")
		assert.NoError(t, err)
		got <- l
	}()
	for deadline := time.Now().Add(10 * time.Second); cb.n.Load() == sentB; { // until the queueing script has answered
		require.True(t, time.Now().Before(deadline), "the waiter's script did not answer")
		time.Sleep(time.Millisecond)
	}
	queued := calls(t, admin)
	nq, byq := inner(before, queued)
	require.NoError(t, held.Unlock(t.Context()))
	var next *lmx.Lease
	select {
	case next = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not granted")
	}
	require.NotNil(t, next)
	nr, byr := inner(queued, calls(t, admin))
	assert.Equal(t, int64(1), ca.n.Load()-sentA, "the holder's round trips")
	assert.Equal(t, int64(1), cb.n.Load()-sentB, "the waiter's round trips")
	assert.LessOrEqual(t, nq, maxQueue, "commands run to queue: %v", byq)
	assert.LessOrEqual(t, nr, maxHandOff, "commands run to release and grant: %v", byr)
	require.NoError(t, next.Unlock(t.Context()))
}

// maxQueue and maxHandOff are how many commands queueing a Lock and a
// release that grants it run in Redis (10 and 21 before the release's fast
// path, 20 before it knew that no lock-delay runs, 19 before a waiter's
// queue time was in its queue entry; queueing behind a sole holder 10
// before it knew that no lock-delay runs).
const maxQueue, maxHandOff = 9, 18

// maxUncontended is how many commands an uncontended Lock and Unlock run
// in Redis together (19 before the fast paths: 10 and 9).
const maxUncontended = 16
