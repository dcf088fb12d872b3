package etcd_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd keeps every name a queue ever had in its index until it compacts,
// and each read of the queue walks them all: were the names of requests
// new every time, a busy key would grow slower by the hour on an etcd that
// is not compacted (a key with 100,000 past requests took 160 times as
// long a cycle as a fresh one). A Locker's requests reuse their names: 4
// goroutines sharing a Locker make 100 requests on 4 names at most.
func TestRequestNamesReused(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("names/%d", prefixes.Add(1))
	lk, cli := openLocker(t, fmt.Sprintf("etcd://%s/%s", endpoint, pfx)), rawClient(t)
	queue := pfx + "/hot\x00"
	end := queue + "\xff" // a key in the watched range, put after the last request
	wch := cli.Watch(ctx, queue, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				l, err := lk.Lock(ctx, "hot")
				if !assert.NoError(t, err) {
					return
				}
				assert.NoError(t, l.Unlock(ctx))
			}
		})
	}
	wg.Wait()
	_, err := cli.Put(ctx, end, "")
	require.NoError(t, err)

	names := map[string]bool{}
	requests := 0
	for resp := range wch {
		require.NoError(t, resp.Err())
		for _, ev := range resp.Events {
			k := string(ev.Kv.Key)
			if k == end {
				assert.Equal(t, 100, requests, "requests seen")
				assert.LessOrEqual(t, len(names), 4, "names of 100 requests by 4 goroutines")
				return
			}
			if ev.Type == mvccpb.PUT && ev.Kv.Version == 1 {
				requests++
				names[k] = true
			}
		}
	}
	t.Fatal("the watch ended before the last request")
}

// The words that Release, ForceUnlock and an expiry leave in a session's
// inbox live under the prefix too, but are no lock keys: List, Stats and
// Watch of the whole prefix pass them by.
func TestInboxWordsAreNotKeys(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("inbox/%d/", prefixes.Add(1))
	lk, cli := openLocker(t, fmt.Sprintf("etcd://%s/%s", endpoint, pfx)), rawClient(t)
	events, err := lk.Watch(ctx, "")
	require.NoError(t, err)
	// A word about request "k" of session 7b made at revision 5, as mark
	// writes it (no session 7b is alive, so no Locker deletes it).
	_, err = cli.Put(ctx, pfx+"\x00i/7b/5/k\x007b.0", "forced")
	require.NoError(t, err)

	keys, err := lk.List(ctx, "", 0)
	require.NoError(t, err)
	assert.Empty(t, keys)
	st, err := lk.Stats(ctx)
	require.NoError(t, err)
	assert.Zero(t, st.Keys)
	l, err := lk.Lock(ctx, "k")
	require.NoError(t, err)
	ev := <-events
	assert.Equal(t, lmx.EventAcquired, ev.Type)
	assert.Equal(t, "k", ev.Key)
	assert.Equal(t, l.ID(), ev.ID)
	require.NoError(t, l.Unlock(ctx))
}
