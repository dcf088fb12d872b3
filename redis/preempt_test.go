package redis_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// revoked waits for l's Revoked channel to close.
func revoked(t *testing.T, l *lmx.Lease) {
	t.Helper()
	select {
	case <-l.Revoked():
	case <-time.After(10 * time.Second):
		t.Fatalf("the holder of %q was not asked to make way", l.Key())
	}
}

// A preemptor whose grace is an hour gets the key as soon as the revoked
// holder's Locker dies: at once when it closes (its leases are released),
// within the session TTL when its process is killed. The holder is not
// counted as preempted, and the grant has a newer token.
func TestPreemptorOutlivesHolder(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		pfx := newPrefix()
		a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
		b.SetRecheck(time.Hour) // the grant must come from the release
		held, err := a.Lock(t.Context(), "k", lmx.Priority(1))
		require.NoError(t, err)
		ch := make(chan lockResult, 1)
		lockAsync(t.Context(), b, ch, "w", "k", lmx.Priority(5), lmx.Preempt(time.Hour))
		revoked(t, held)
		require.NoError(t, a.Close())
		assert.ErrorIs(t, held.Err(), lmx.ErrClosed)
		r := await(t, ch, 10*time.Second)
		require.NoError(t, r.err)
		assert.Greater(t, r.lease.Token(), held.Token())
		st, err := b.Stats(t.Context())
		require.NoError(t, err)
		assert.Zero(t, st.Preemptions)
		require.NoError(t, r.lease.Unlock(t.Context()))
	})
	t.Run("killed", func(t *testing.T) {
		pfx := newPrefix()
		token, out, kill := holdInChild(t, pfx)
		b := open(t, pfx, 2*time.Second)
		b.SetRecheck(time.Hour) // the grant must come from the session's expiry
		ch := make(chan lockResult, 1)
		lockAsync(t.Context(), b, ch, "w", "k", lmx.Priority(5), lmx.Preempt(time.Hour))
		line, err := out.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "revoked", strings.TrimSpace(line), "the child said %q", line)
		kill()
		r := await(t, ch, 10*time.Second)
		require.NoError(t, r.err)
		assert.Greater(t, r.lease.Token(), token)
		st, err := b.Stats(t.Context())
		require.NoError(t, err)
		assert.Zero(t, st.Preemptions)
		assert.Equal(t, uint64(1), st.SessionLost)
		require.NoError(t, r.lease.Unlock(t.Context()))
	})
}

// A preemptor that reaches the head of the queue by another's script (the
// waiter before it gives up) is told so, and keeps its deadline itself: the
// holder is preempted after the grace with no recheck, the Watch stream
// says so, and a holder's Unlock then fails with ErrPreempted.
func TestPreemptorReachesHead(t *testing.T) {
	pfx := newPrefix()
	a, b, c := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	c.SetRecheck(time.Hour)
	events, err := a.Watch(t.Context(), "k")
	require.NoError(t, err)
	held, err := a.Lock(t.Context(), "k", lmx.Priority(1))
	require.NoError(t, err)
	bctx, cancelB := context.WithCancel(t.Context())
	defer cancelB()
	chB := make(chan lockResult, 1)
	lockAsync(bctx, b, chB, "b", "k", lmx.Priority(5))
	waitQueued(t, a, "k", 1)
	ch := make(chan lockResult, 1)
	lockAsync(t.Context(), c, ch, "c", "k", lmx.Priority(5), lmx.Preempt(200*time.Millisecond))
	waitQueued(t, a, "k", 2)
	select {
	case <-held.Revoked():
		t.Fatal("revoked for a preemptor that is not at the head of the queue")
	default:
	}
	cancelB()
	require.ErrorIs(t, await(t, chB, 10*time.Second).err, context.Canceled)
	revoked(t, held)
	r := await(t, ch, 10*time.Second)
	require.NoError(t, r.err)
	assert.Greater(t, r.lease.Token(), held.Token())
	select {
	case <-held.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the preempted holder did not learn it")
	}
	require.ErrorIs(t, held.Err(), lmx.ErrPreempted)
	require.ErrorIs(t, held.Unlock(t.Context()), lmx.ErrPreempted)
	for _, want := range []lmx.Event{{Type: lmx.EventAcquired, Token: held.Token()},
		{Type: lmx.EventPreempted, Token: held.Token()}, {Type: lmx.EventAcquired, Token: r.lease.Token()}} {
		select {
		case ev := <-events:
			assert.Equal(t, want.Type, ev.Type, "%+v", ev)
			assert.Equal(t, want.Token, ev.Token, "%+v", ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("no event %v", want.Type)
		}
	}
	require.NoError(t, r.lease.Unlock(t.Context()))
}

// A preemptor that gives up ends its round: the holder it revoked keeps
// the key past the grace, as the broker's does.
func TestPreemptorGivesUp(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	held, err := a.Lock(t.Context(), "k", lmx.Priority(1))
	require.NoError(t, err)
	const grace = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan lockResult, 1)
	lockAsync(ctx, b, ch, "w", "k", lmx.Priority(5), lmx.Preempt(grace))
	revoked(t, held)
	cancel()
	require.ErrorIs(t, await(t, ch, 10*time.Second).err, context.Canceled)
	time.Sleep(2 * grace)                  // past the deadline the round had set
	ki, err := b.Inspect(t.Context(), "k") // reaps what is due
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, held.Token(), ki.Holders[0].Token)
	require.NoError(t, held.Err())
	require.NoError(t, held.Unlock(t.Context()))
}
