package etcd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type lockResult struct {
	name  string
	lease *lmx.Lease
	err   error
}

func lockAsync(ctx context.Context, lk *etcd.Locker, ch chan<- lockResult, name, key string, opts ...lmx.LockOption) {
	go func() {
		l, err := lk.Lock(ctx, key, opts...)
		ch <- lockResult{name, l, err}
	}()
}

func await(t *testing.T, ch <-chan lockResult) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err, r.name)
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("no grant")
		return lockResult{}
	}
}

// recordKeys returns the grant records under url's prefix pfx.
func recordKeys(t *testing.T, pfx string) []string {
	t.Helper()
	resp, err := rawClient(t).Get(t.Context(), pfx+"\x00g/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// A request with a Priority that arrives while FIFO requests hold, each
// through a Locker of its own as separate processes would, leaves them
// holding with their tokens, is granted before the FIFO request queued
// before it, and that one is then granted with a newer token than its own:
// tokens keep increasing in grant order, back in FIFO too, and the grant
// record goes once the queue is FIFO again.
func TestPriorityOverFIFOHolders(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("ranked/%d/", prefixes.Add(1))
	url := fmt.Sprintf("etcd://%s/%s?session_ttl=2s", endpoint, pfx)
	a, b, c := openLocker(t, url), openLocker(t, url), openLocker(t, url)
	h1, err := a.Lock(ctx, "k", lmx.Limit(2))
	require.NoError(t, err)
	h2, err := a.Lock(ctx, "k", lmx.Limit(2))
	require.NoError(t, err)
	fifo, ranked := make(chan lockResult, 1), make(chan lockResult, 1)
	lockAsync(ctx, b, fifo, "fifo", "k", lmx.Limit(2))
	waitWaiters(t, a, "k", 1)
	lockAsync(ctx, c, ranked, "ranked", "k", lmx.Limit(2), lmx.Priority(5))
	waitWaiters(t, a, "k", 2)

	ki, err := a.Inspect(ctx, "k")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 2)
	assert.Equal(t, []uint64{h1.Token(), h2.Token()}, []uint64{ki.Holders[0].Token, ki.Holders[1].Token}, "the holders keep their tokens")
	assert.Equal(t, []lmx.WaiterInfo{{Priority: 5}, {}}, ki.Waiters, "the waiters in the order they are granted")

	require.NoError(t, h1.Unlock(ctx))
	r := await(t, ranked)
	assert.Greater(t, r.lease.Token(), h2.Token())
	select {
	case f := <-fifo:
		t.Fatalf("the FIFO waiter was granted before the ranked one released: %v", f.err)
	default:
	}
	require.NoError(t, h2.Unlock(ctx))
	f := await(t, fifo)
	assert.Greater(t, f.lease.Token(), r.lease.Token(), "a request created before the ranked one's grant is granted with a newer token")
	require.NoError(t, r.lease.Unlock(ctx))
	require.NoError(t, f.lease.Unlock(ctx))

	// FIFO again: a hand-off between two Lockers drops the stale record.
	h, err := a.Lock(ctx, "k", lmx.Limit(2))
	require.NoError(t, err)
	h2, err = a.Lock(ctx, "k", lmx.Limit(2))
	require.NoError(t, err)
	lockAsync(ctx, b, fifo, "fifo", "k", lmx.Limit(2))
	waitWaiters(t, a, "k", 1)
	require.NoError(t, h.Unlock(ctx))
	f = await(t, fifo)
	assert.Greater(t, f.lease.Token(), h2.Token())
	assert.Empty(t, recordKeys(t, pfx), "the stale grant record was not dropped")
	require.NoError(t, f.lease.Unlock(ctx))
	require.NoError(t, h2.Unlock(ctx))
}

// A holder granted by a claim in written mode whose session is lost frees
// the key: the FIFO waiter of another Locker, created before it, is granted
// with a newer token.
func TestRankedHolderSessionLost(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/ranked/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	a, b, c := openLocker(t, url), openLocker(t, url), openLocker(t, url)
	h, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	fifo, ranked := make(chan lockResult, 1), make(chan lockResult, 1)
	lockAsync(ctx, b, fifo, "fifo", "k")
	waitWaiters(t, a, "k", 1)
	lockAsync(ctx, c, ranked, "ranked", "k", lmx.Priority(3))
	waitWaiters(t, a, "k", 2)
	require.NoError(t, h.Unlock(ctx))
	r := await(t, ranked)

	_, err = rawClient(t).Revoke(ctx, c.Session())
	require.NoError(t, err)
	select {
	case <-r.lease.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not learn that its session was lost")
	}
	require.ErrorIs(t, r.lease.Err(), lmx.ErrSessionLost)
	f := await(t, fifo)
	assert.Greater(t, f.lease.Token(), r.lease.Token())
	require.NoError(t, f.lease.Unlock(ctx))
	assertFree(t, a, "k")
}

// A waiter is overtaken by at most 64 later requests of higher priority,
// when each comes through a Locker of its own: the count is in the grant
// record, not in any Locker.
func TestOvertakeBoundAcrossLockers(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/ranked/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	lockers := []*etcd.Locker{openLocker(t, url), openLocker(t, url), openLocker(t, url)}
	holder, err := lockers[0].Lock(ctx, "k")
	require.NoError(t, err)
	ch := make(chan lockResult, 70)
	lockAsync(ctx, lockers[1], ch, "low", "k", lmx.Priority(1))
	waitWaiters(t, lockers[0], "k", 1)
	const highs = 66
	for i := range highs {
		lockAsync(ctx, lockers[i%3], ch, fmt.Sprint("high", i), "k", lmx.Priority(9))
		waitWaiters(t, lockers[0], "k", i+2)
	}
	require.NoError(t, holder.Unlock(ctx))
	var last uint64
	for i := range highs + 1 {
		r := await(t, ch)
		assert.Greater(t, r.lease.Token(), last)
		last = r.lease.Token()
		require.NoError(t, r.lease.Unlock(ctx))
		if r.name == "low" {
			assert.Equal(t, 64, i, "the low-priority waiter was granted after %d others", i)
		}
	}
}

// A preemptor of another Locker asks the holder to make way (Revoked
// closes), ends its lease with ErrPreempted once the grace is over, and is
// granted with a newer token; a third Locker's Watch sees it, and Stats
// counts it. A holder asked with NoPreempt is never revoked.
func TestPreemptAcrossLockers(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/ranked/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	a, b, c := openLocker(t, url), openLocker(t, url), openLocker(t, url)
	events, err := c.Watch(ctx, "k")
	require.NoError(t, err)

	safe, err := a.Lock(ctx, "safe", lmx.NoPreempt())
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = b.Lock(short, "safe", lmx.Priority(5), lmx.Preempt(0))
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	select {
	case <-safe.Revoked():
		t.Fatal("a NoPreempt holder was revoked")
	default:
	}
	require.NoError(t, safe.Unlock(ctx))

	held, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	const grace = 300 * time.Millisecond
	start := time.Now()
	ch := make(chan lockResult, 1)
	lockAsync(ctx, b, ch, "preemptor", "k", lmx.Priority(1), lmx.Preempt(grace))
	select {
	case <-held.Revoked():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder was not asked to make way")
	}
	require.NoError(t, held.Err(), "the grace is the holder's")
	r := await(t, ch)
	assert.GreaterOrEqual(t, time.Since(start), grace)
	assert.Greater(t, r.lease.Token(), held.Token())
	select {
	case <-held.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the preempted holder did not learn it")
	}
	require.ErrorIs(t, held.Err(), lmx.ErrPreempted)
	require.ErrorIs(t, held.Unlock(ctx), lmx.ErrPreempted)
	st, err := c.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.Preemptions)
	require.NoError(t, r.lease.Unlock(ctx))
	for _, want := range []lmx.Event{{Type: lmx.EventAcquired, Token: held.Token()}, {Type: lmx.EventPreempted, Token: held.Token()},
		{Type: lmx.EventAcquired, Token: r.lease.Token()}, {Type: lmx.EventReleased, Token: r.lease.Token()}} {
		select {
		case ev := <-events:
			assert.Equal(t, want.Type, ev.Type, "%+v", ev)
			assert.Equal(t, want.Token, ev.Token, "%+v", ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("no event %v", want.Type)
		}
	}
}

// An owner re-enters a key it holds through another Locker (another
// process) at once, with the same lock id and token, and the key is free
// only once both grants are undone; an owner that holds it shared cannot
// re-enter it exclusive.
func TestOwnerAcrossLockers(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/owner/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	a, b, c := openLocker(t, url), openLocker(t, url), openLocker(t, url)
	first, err := a.Lock(ctx, "k", lmx.Owner("alice"))
	require.NoError(t, err)
	again, err := b.TryLock(ctx, "k", lmx.Owner("alice"))
	require.NoError(t, err, "the owner re-enters through another Locker at once")
	assert.Equal(t, first.ID(), again.ID())
	assert.Equal(t, first.Token(), again.Token())
	_, err = c.TryLock(ctx, "k", lmx.Owner("bob"))
	require.ErrorIs(t, err, lmx.ErrLocked)
	ki, err := c.Inspect(ctx, "k")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, 2, ki.Holders[0].Count)

	require.NoError(t, first.Unlock(ctx))
	_, err = c.TryLock(ctx, "k")
	require.ErrorIs(t, err, lmx.ErrLocked, "the re-entry still holds")
	require.NoError(t, again.Unlock(ctx))
	assertFree(t, c, "k")

	shared, err := a.Lock(ctx, "rw", lmx.Owner("carol"), lmx.Shared())
	require.NoError(t, err)
	_, err = b.Lock(ctx, "rw", lmx.Owner("carol"))
	require.ErrorIs(t, err, lmx.ErrInvalidOption)
	r2, err := b.Lock(ctx, "rw", lmx.Owner("carol"), lmx.Shared())
	require.NoError(t, err)
	assert.Equal(t, shared.Token(), r2.Token())
	require.NoError(t, shared.Unlock(ctx))
	require.NoError(t, r2.Unlock(ctx))
	assertFree(t, c, "rw")
}

// A preemptor's ask to make way that reaches a Locker after the lease it
// is about ended is dropped from the session's inbox, not kept for a Lock
// that will never read it.
func TestLateAskDropped(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("late/%d/", prefixes.Add(1))
	a := openLocker(t, fmt.Sprintf("etcd://%s/%s?session_ttl=2s", endpoint, pfx))
	l, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
	hex := strconv.FormatInt(int64(a.Session()), 16)
	ask := fmt.Sprintf("%s\x00i/%s/%d/k\x00%s.0", pfx, hex, l.Token(), hex)
	cli := rawClient(t)
	_, err = cli.Put(ctx, ask, "revoked", clientv3.WithLease(a.Session()))
	require.NoError(t, err)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := cli.Get(ctx, ask)
		require.NoError(t, err)
		if len(resp.Kvs) == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the late ask stayed in the inbox")
	}
	assertFree(t, a, "k")
}

// Lockers whose requests mix FIFO and priorities (some below 0), some of
// which give up while queued, keep one holder at a time on a key that goes
// in and out of written mode, with tokens increasing in grant order.
func TestRankedMixStress(t *testing.T) {
	url := fmt.Sprintf("etcd://%s/mix/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	lockers := []*etcd.Locker{openLocker(t, url), openLocker(t, url), openLocker(t, url)}
	var (
		inside atomic.Int32
		mu     sync.Mutex
		last   uint64
		grants atomic.Int64
		wg     sync.WaitGroup
	)
	deadline := time.Now().Add(3 * time.Second)
	for g := range 9 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 21))
			lk := lockers[g%len(lockers)]
			for time.Now().Before(deadline) && !t.Failed() {
				var opts []lmx.LockOption
				if rng.IntN(3) == 0 {
					opts = append(opts, lmx.Priority(rng.IntN(5)-2))
				}
				ctx, cancel := context.WithTimeout(t.Context(), time.Duration(20+rng.IntN(400))*time.Millisecond)
				l, err := lk.Lock(ctx, "k", opts...)
				cancel()
				if err != nil {
					assert.ErrorIs(t, err, context.DeadlineExceeded)
					continue
				}
				assert.Equal(t, int32(1), inside.Add(1), "two holders at once")
				mu.Lock()
				assert.Greater(t, l.Token(), last, "tokens out of grant order")
				last = l.Token()
				mu.Unlock()
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
				inside.Add(-1)
				assert.NoError(t, l.Unlock(t.Context()))
				grants.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d grants", grants.Load())
	assert.Positive(t, grants.Load())
	assertFree(t, lockers[0], "k")
}
