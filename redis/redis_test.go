package redis_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/locktest"
	"github.com/lmx-go/lmx/redis"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var prefixes atomic.Int64

// newPrefix returns a prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("test%d:", prefixes.Add(1)) }

// open opens a Locker through lmx.Open on the test server under prefix.
func open(t testing.TB, prefix string, sessionTTL time.Duration) *redis.Locker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := lmx.Open(ctx, fmt.Sprintf("redis://%s/0?prefix=%s&session_ttl=%v", addr, prefix, sessionTTL))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l.(*redis.Locker)
}

// client returns a go-redis client of the test server.
func client(t testing.TB) *goredis.Client {
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func TestConformance(t *testing.T) {
	locktest.Run(t, func(t testing.TB) lmx.Locker { return open(t, newPrefix(), 2*time.Second) },
		locktest.RealTime(100*time.Millisecond), // TTLs with room for a loaded machine
		locktest.Skip("a re-entry is an lmx.Lease of its own (same id and token): lmx.NewLease gives a backend no way to count grants of one *Lease; TestInspectOwner covers Owner and Count", "Inspect"),
	)
}

// The URL forms lmx.Open takes, and the ones it refuses with a clear error.
func TestOpenURL(t *testing.T) {
	pfx := newPrefix()
	for _, u := range []string{
		"redis://" + addr,
		"redis://" + addr + "/0?prefix=" + pfx,
		"rpm+redis://" + addr + "/0?prefix=" + pfx + "&session_ttl=3s",
		"redis://default:@" + addr + "/2?prefix=" + pfx + "&dial_timeout=2s",
	} {
		l, err := lmx.Open(t.Context(), u)
		require.NoError(t, err, u)
		lease, err := l.Lock(t.Context(), "k")
		require.NoError(t, err, u)
		require.NoError(t, lease.Unlock(t.Context()))
		require.NoError(t, l.Close())
	}
	for _, u := range []string{
		"redis://" + addr + "/0?session_ttl=soon",
		"redis://" + addr + "/0?session_ttl=-1s",
		"redis://" + addr + "/0?colour=blue",
		"redis://" + addr + "/x",
	} {
		_, err := lmx.Open(t.Context(), u)
		assert.Error(t, err, u)
	}
}

// The keys of a prefix are those of every Locker opened with it, and no
// other's: a second prefix on the same Redis has its own locks.
func TestPrefixes(t *testing.T) {
	p1, p2 := newPrefix(), newPrefix()
	a, b, c := open(t, p1, 2*time.Second), open(t, p1, 2*time.Second), open(t, p2, 2*time.Second)
	held, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	_, err = b.TryLock(t.Context(), "k")
	require.ErrorIs(t, err, lmx.ErrLocked)
	other, err := c.TryLock(t.Context(), "k")
	require.NoError(t, err)
	require.NoError(t, other.Unlock(t.Context()))
	require.NoError(t, held.Unlock(t.Context()))
}

// Deleting a Locker's session key in Redis kills the session: its lease
// ends with ErrSessionLost, the waiter of another Locker gets the key, and
// the first Locker starts a new session for its next Lock.
func TestSessionLost(t *testing.T) {
	pfx, a, _, held, ch := contended(t, 2*time.Second, 0)

	require.NoError(t, client(t).Del(t.Context(), pfx+"s:"+a.Session()).Err())
	select {
	case <-held.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder did not learn that its session was lost")
	}
	assert.ErrorIs(t, held.Err(), lmx.ErrSessionLost)
	assert.ErrorIs(t, held.Err(), lmx.ErrLeaseLost)
	assert.ErrorIs(t, held.Unlock(t.Context()), lmx.ErrNotHeld)
	inOrder(t, ch, held.Token(), "w")

	again, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	require.NoError(t, again.Unlock(t.Context()))
	st, err := a.Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.SessionLost)
	assert.Equal(t, uint64(3), st.Grants)
}

// Stats counts the live sessions under the prefix: a Locker's from its
// first Lock until it closes.
func TestStatsSessions(t *testing.T) {
	pfx := newPrefix()
	a, b, idle := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	sessions := func() int {
		t.Helper()
		st, err := idle.Stats(t.Context())
		require.NoError(t, err)
		return st.Sessions
	}
	assert.Equal(t, 0, sessions())
	for _, l := range []*redis.Locker{a, b} {
		lease, err := l.Lock(t.Context(), "k")
		require.NoError(t, err)
		require.NoError(t, lease.Unlock(t.Context()))
	}
	assert.Equal(t, 2, sessions())
	require.NoError(t, a.Close())
	assert.Equal(t, 1, sessions())
}

// Watch streams the events of every Locker on the prefix, for the keys under
// the watched one: acquired, then released, expired, forced or session-lost.
func TestWatch(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := a.Watch(ctx, "w/")
	require.NoError(t, err)

	l, err := b.Lock(t.Context(), "w/a")
	require.NoError(t, err)
	other, err := b.Lock(t.Context(), "other/a")
	require.NoError(t, err)
	require.NoError(t, other.Unlock(t.Context()))
	require.NoError(t, l.Unlock(t.Context()))
	x, err := b.Lock(t.Context(), "w/x", lmx.TTL(100*time.Millisecond))
	require.NoError(t, err)
	<-x.Done()
	f, err := b.Lock(t.Context(), "w/f")
	require.NoError(t, err)
	require.NoError(t, a.ForceUnlock(t.Context(), "w/f"))
	s, err := b.Lock(t.Context(), "w/s")
	require.NoError(t, err)
	require.NoError(t, client(t).Del(t.Context(), pfx+"s:"+b.Session()).Err())
	<-s.Done()

	want := []struct {
		t lmx.EventType
		l *lmx.Lease
	}{
		{lmx.EventAcquired, l}, {lmx.EventReleased, l},
		{lmx.EventAcquired, x}, {lmx.EventExpired, x},
		{lmx.EventAcquired, f}, {lmx.EventForced, f},
		{lmx.EventAcquired, s}, {lmx.EventSessionLost, s},
	}
	for _, w := range want {
		var ev lmx.Event
		select {
		case ev = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no %v event", w.t)
		}
		require.Equal(t, w.t, ev.Type, "event %+v", ev)
		assert.Equal(t, w.l.Key(), ev.Key)
		assert.Equal(t, w.l.ID(), ev.ID)
		assert.Equal(t, w.l.Token(), ev.Token)
		assert.False(t, ev.Time.IsZero())
	}
	cancel()
	for range ch { // closes once the watch is cancelled
	}
}

// Inspect shows each holder's Owner and how often it re-entered, from any
// Locker on the prefix; the same owner through another Locker (another
// process) queues like anyone else.
func TestInspectOwner(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	first, err := a.Lock(t.Context(), "i", lmx.Owner("alice"))
	require.NoError(t, err)
	again, err := a.Lock(t.Context(), "i", lmx.Owner("alice"))
	require.NoError(t, err)
	assert.Equal(t, first.ID(), again.ID())
	assert.Equal(t, first.Token(), again.Token())
	_, err = b.TryLock(t.Context(), "i", lmx.Owner("alice"))
	require.ErrorIs(t, err, lmx.ErrLocked, "an owner's re-entry is for its own Locker")

	count := func() int {
		t.Helper()
		ki, err := b.Inspect(t.Context(), "i")
		require.NoError(t, err)
		require.Len(t, ki.Holders, 1)
		assert.Equal(t, "alice", ki.Holders[0].Owner)
		return ki.Holders[0].Count
	}
	assert.Equal(t, 2, count())
	require.NoError(t, again.Unlock(t.Context()))
	assert.Equal(t, 1, count())
	require.NoError(t, first.Unlock(t.Context()))
	ki, err := b.Inspect(t.Context(), "i")
	require.NoError(t, err)
	assert.Empty(t, ki.Holders)
}

// A re-entry asks Redis: when the owner's lease is gone there (its session
// expired before its Locker noticed), the re-entry is not granted from
// memory, the old lease ends, and the request queues as a new one.
func TestReenterGone(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	old, err := a.Lock(t.Context(), "k", lmx.Owner("o"))
	require.NoError(t, err)
	// The holder leaves Redis with no word to its Locker, as when its
	// session expired unnoticed, and another Locker takes the key.
	require.NoError(t, client(t).HDel(t.Context(), pfx+"h:k", old.ID().String()).Err())
	other, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = a.Lock(ctx, "k", lmx.Owner("o"))
	require.ErrorIs(t, err, context.DeadlineExceeded, "re-entered a lease Redis no longer has")
	require.ErrorIs(t, old.Err(), lmx.ErrLeaseLost)
	require.NoError(t, other.Unlock(t.Context()))
}
