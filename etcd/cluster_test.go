package etcd_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// cluster is a three-member etcd embedded in the test, on 127.0.0.1.
type cluster struct {
	t       *testing.T
	cfgs    []*embed.Config
	members []*embed.Etcd // nil while stopped
}

func startCluster(t *testing.T) *cluster {
	dir := t.TempDir()
	c := &cluster{t: t}
	var peers []string
	for i := range 3 {
		name := fmt.Sprint("m", i)
		cfg := memberConfig(name, filepath.Join(dir, name))
		peers = append(peers, cfg.InitialCluster)
		c.cfgs = append(c.cfgs, cfg)
	}
	for _, cfg := range c.cfgs {
		cfg.InitialCluster = strings.Join(peers, ",")
		cfg.InitialClusterToken = "lmx-test"
	}
	c.members = make([]*embed.Etcd, 3)
	t.Cleanup(func() {
		for _, m := range c.members {
			if m != nil {
				m.Close()
			}
		}
	})
	var wg sync.WaitGroup
	for i := range c.cfgs {
		wg.Go(func() { c.start(i) })
	}
	wg.Wait()
	return c
}

// start starts member i, from its data directory if it has one, and waits
// until it serves.
func (c *cluster) start(i int) {
	e, err := embed.StartEtcd(c.cfgs[i])
	if !assert.NoError(c.t, err) {
		return
	}
	c.members[i] = e
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		c.t.Error("an etcd member did not become ready")
	}
}

func (c *cluster) endpoint(i int) string { return c.cfgs[i].ListenClientUrls[0].String() }

// leader returns the index of the leader member, waiting at most 30s for
// the running members to agree on one.
func (c *cluster) leader() int {
	c.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for i, m := range c.members {
			if m != nil && m.Server.Leader() == m.Server.MemberID() {
				return i
			}
		}
	}
	c.t.Fatal("no leader after 30s")
	return -1
}

// keyLog checks one key: at most one holder at a time, and tokens that
// increase in grant order.
type keyLog struct {
	mu      sync.Mutex
	holding int
	tokens  []uint64
}

func (k *keyLog) granted(t *testing.T, l *lmx.Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.holding++
	assert.Equal(t, 1, k.holding, "key %q granted twice", l.Key())
	if n := len(k.tokens); n > 0 {
		assert.Greater(t, l.Token(), k.tokens[n-1], "token of %q went back", l.Key())
	}
	k.tokens = append(k.tokens, l.Token())
}

func (k *keyLog) released() {
	k.mu.Lock()
	k.holding--
	k.mu.Unlock()
}

// clusterLocker opens a Locker under pfx through a client of the members
// at eps, both closed at the end of t.
func clusterLocker(t *testing.T, pfx string, eps ...string) *etcd.Locker {
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	lk, err := etcd.New(t.Context(), cli, pfx, etcd.SessionTTL(10*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { lk.Close() })
	return lk
}

// lockOnce locks key through w, logs and counts the grant, and unlocks.
func lockOnce(ctx context.Context, t *testing.T, w *etcd.Locker, key string, log *keyLog, granted *atomic.Int64, round string) {
	l, err := w.Lock(ctx, key)
	if !assert.NoError(t, err, "%s: waiter of %q", round, key) {
		return
	}
	log.granted(t, l)
	granted.Add(1)
	log.released()
	assert.NoError(t, l.Unlock(ctx), "%s: waiter of %q", round, key)
}

// Locks held and waiters queued on several keys live through the loss of
// the etcd leader and its return: no key is granted twice, tokens keep
// increasing, every waiter is granted, and a Locker whose member went away
// keeps its lease through another one.
func TestClusterLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd takes seconds")
	}
	c := startCluster(t)
	lead := c.leader()
	follower := (lead + 1) % 3
	all := []string{c.endpoint(0), c.endpoint(1), c.endpoint(2)}
	pfx := fmt.Sprintf("cluster/%d", prefixes.Add(1))
	// The holder of k0 talks to the leader first, the follower next.
	holders := []*etcd.Locker{clusterLocker(t, pfx, c.endpoint(lead), c.endpoint(follower)), clusterLocker(t, pfx, all...), clusterLocker(t, pfx, all...)}
	waiters := []*etcd.Locker{clusterLocker(t, pfx, all...), clusterLocker(t, pfx, all...)}
	keys := []string{"k0", "k1", "k2"}
	logs := map[string]*keyLog{}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var held []*lmx.Lease
	for i, k := range keys {
		logs[k] = new(keyLog)
		l, err := holders[i].Lock(ctx, k)
		require.NoError(t, err)
		logs[k].granted(t, l)
		held = append(held, l)
	}
	var granted atomic.Int64
	var wg sync.WaitGroup
	waitAll := func(round string) {
		for _, k := range keys {
			for _, w := range waiters {
				wg.Go(func() { lockOnce(ctx, t, w, k, logs[k], &granted, round) })
			}
		}
	}
	waitAll("leader lost")
	for _, k := range keys {
		waitWaiters(t, holders[1], k, len(waiters))
	}

	var sessions []clientv3.LeaseID
	for _, h := range holders {
		sessions = append(sessions, h.Session())
	}
	c.members[lead].Close()
	c.members[lead] = nil
	newLead := c.leader()
	require.NotEqual(t, lead, newLead)

	for i, l := range held {
		select {
		case <-l.Done():
			t.Fatalf("the lease of %q ended with the leader: %v", keys[i], l.Err())
		default:
		}
		logs[keys[i]].released()
		require.NoError(t, l.Unlock(ctx), "the holder of %q unlocks through another member", keys[i])
	}
	wg.Wait()
	require.Equal(t, int64(len(keys)*len(waiters)), granted.Load(), "every waiter is granted")
	for i, h := range holders {
		assert.Equal(t, sessions[i], h.Session(), "the session of the holder of %q was lost", keys[i])
	}

	// The member comes back; every Locker locks every key again.
	c.start(lead)
	granted.Store(0)
	waitAll("member back")
	for i, k := range keys {
		l, err := holders[i].Lock(ctx, k)
		require.NoError(t, err)
		logs[k].granted(t, l)
		logs[k].released()
		require.NoError(t, l.Unlock(ctx))
	}
	wg.Wait()
	require.Equal(t, int64(len(keys)*len(waiters)), granted.Load())
	for _, k := range keys {
		assert.Len(t, logs[k].tokens, 2+2*len(waiters), "grants of %q", k)
	}
}
