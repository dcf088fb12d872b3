package etcd_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A waiter whose request key went while it waited (as its session's etcd
// lease expiring behind a stalled link deletes it) is never granted when
// the holder before it leaves: its Lock fails with ErrSessionLost. The
// holder was itself granted after waiting, the case where a release used
// to hand the key on without the waiter reading the queue.
func TestWaiterKeyGone(t *testing.T) {
	url := fmt.Sprintf("etcd://%s/gone/%d/?session_ttl=5s", endpoint, prefixes.Add(1))
	first, holder, waiter := openLocker(t, url), openLocker(t, url), openLocker(t, url)
	cli := rawClient(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	l1, err := first.Lock(ctx, "k")
	require.NoError(t, err)
	held := make(chan *lmx.Lease, 1)
	go func() {
		l, err := holder.Lock(ctx, "k")
		assert.NoError(t, err)
		held <- l
	}()
	waitWaiters(t, first, "k", 1)
	require.NoError(t, l1.Unlock(ctx))
	l2 := <-held
	require.NotNil(t, l2)

	got := make(chan error, 1)
	go func() {
		l, err := waiter.Lock(ctx, "k")
		if l != nil {
			l.Unlock(ctx)
		}
		got <- err
	}()
	waitWaiters(t, first, "k", 1)
	deleteRequest(t, cli, waiter)
	require.NoError(t, l2.Unlock(ctx))
	select {
	case err := <-got:
		assert.ErrorIs(t, err, lmx.ErrSessionLost, "a waiter whose key went was granted")
	case <-ctx.Done():
		t.Fatal("the waiter whose key went neither failed nor was granted")
	}
	ki, err := first.Inspect(ctx, "k")
	require.NoError(t, err)
	assert.Empty(t, ki.Holders)
	assert.Empty(t, ki.Waiters)
}

// A holder whose key went behind its back (its session's etcd lease
// expired) does not release it: Unlock reports ErrNotHeld and the lease
// ends with ErrSessionLost.
func TestUnlockKeyGone(t *testing.T) {
	lk := newLocker(t)
	cli := rawClient(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	l, err := lk.Lock(ctx, "k")
	require.NoError(t, err)
	deleteRequest(t, cli, lk)
	assert.ErrorIs(t, l.Unlock(ctx), lmx.ErrNotHeld)
	<-l.Done()
	assert.ErrorIs(t, l.Err(), lmx.ErrSessionLost)
}

// rawClient is a client of the test's etcd, closed with the test.
func rawClient(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// deleteRequest deletes by hand the one request key of lk's session.
func deleteRequest(t *testing.T, cli *clientv3.Client, lk *etcd.Locker) {
	t.Helper()
	resp, err := cli.Get(t.Context(), "", clientv3.WithFromKey())
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		if clientv3.LeaseID(kv.Lease) == lk.Session() {
			keys = append(keys, string(kv.Key))
		}
	}
	require.Len(t, keys, 1, "the requests of the session")
	_, err = cli.Delete(t.Context(), keys[0])
	require.NoError(t, err)
}
