package lmx_test

import (
	"context"
	"log/slog"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// brokerGoroutines returns the stacks, by goroutine id, of the goroutines
// running the broker's or its doors' code. One that has only its group's
// exit left to run (its count given back) has finished.
func brokerGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	broker := regexp.MustCompile(`^github\.com/lmx-go/lmx\.\((\*conn|\*session|\*lmConn|\*lmMany|\*multi|\*Broker|\*shard|\*server)\)`)
	gs := map[string]string{}
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, frame := range strings.Split(g, "\n") {
			if broker.MatchString(frame) {
				id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
				gs[id] = g
				break
			}
		}
	}
	return gs
}

// Close waits for every goroutine of the broker and its doors: once it
// returns, none is left, whatever was going on: a listener, a native
// session, a live-mutex connection with an acquire-many queued, LockAll
// leases, TTL and preemption timers.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := brokerGoroutines()
	b := lmx.NewBroker(lmx.WithLogger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()
	addr, err := b.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c, err := lmx.Dial(ctx, "tcp://"+addr.String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Lock(ctx, "remote")
	require.NoError(t, err)

	_, err = b.LockAll(ctx, []string{"a", "b", "c"}, lmx.TTL(time.Hour))
	require.NoError(t, err)
	_, err = b.Lock(ctx, "p", lmx.TTL(time.Hour))
	require.NoError(t, err)
	preemptor := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx, "p", lmx.Priority(1), lmx.Preempt(time.Hour))
		preemptor <- err
	}()
	a := lmPipe(t, b)
	require.Equal(t, "b", a.acquireMany("M", []string{"x", "b"}, nil)["contendedKey"])

	require.NoError(t, b.Close())
	left := brokerGoroutines()
	for id := range before {
		delete(left, id)
	}
	for _, g := range left {
		if strings.Contains(g, "lmx_test.TestCloseLeavesNoGoroutine") { // the preemptor
			delete(left, strings.Fields(g)[1])
		}
	}
	assert.Empty(t, left, "goroutines left after Close")
	require.ErrorIs(t, <-preemptor, lmx.ErrClosed)
}
