package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A key's queue in etcd: its requests' names and values, the order in which
// they are granted, and the reads a waiter makes of those before it.

// waiter describes one request in a key's queue.
type waiter struct {
	key    string    // etcd key
	id     ulid.ULID // lock id
	rev    int64     // create revision
	mod    int64     // mod revision, as read
	limit  int
	shared bool
	sess   string           // the session of the Locker that asked, in hex
	lease  clientv3.LeaseID // the etcd lease the key is attached to
	owner  string
	delay  time.Duration // LockDelay
	marker bool          // no request: the lock-delay of one that ended
	prio   int           // Priority
	noPre  bool          // NoPreempt
}

// encodeValue is the value of a request's key: its mode ("x" exclusive,
// "s" shared, "d" a lock-delay's marker) and limit, with "/p" and its
// Priority when not 0 and "/n" for NoPreempt; the session of its Locker,
// which is where Release and ForceUnlock tell it that its key went, its
// LockDelay in milliseconds, its lock id, and its owner.
func encodeValue(w waiter) string {
	mode := "x"
	switch {
	case w.marker:
		mode = "d"
	case w.shared:
		mode = "s"
	}
	mode += strconv.Itoa(w.limit)
	if w.prio != 0 {
		mode += "/p" + strconv.Itoa(w.prio)
	}
	if w.noPre {
		mode += "/n"
	}
	return mode + " " + w.sess + " " + strconv.FormatInt(w.delay.Milliseconds(), 10) + " " + w.id.String() + " " + w.owner
}

func decode(kv *mvccpb.KeyValue) waiter {
	w := waiter{key: string(kv.Key), rev: kv.CreateRevision, mod: kv.ModRevision, limit: 1, lease: clientv3.LeaseID(kv.Lease)}
	f := strings.SplitN(string(kv.Value), " ", 5)
	v := f[0]
	if len(f) == 5 {
		w.sess, w.owner = f[1], f[4]
		ms, _ := strconv.ParseInt(f[2], 10, 64)
		w.delay = time.Duration(ms) * time.Millisecond
		w.id, _ = ulid.ParseStrict(f[3])
	}
	v, flags, _ := strings.Cut(v, "/")
	if len(v) > 1 {
		w.shared = v[0] == 's'
		w.marker = v[0] == 'd'
		if n, err := strconv.Atoi(v[1:]); err == nil {
			w.limit = n
		}
	}
	for f := range strings.SplitSeq(flags, "/") {
		switch {
		case f == "n":
			w.noPre = true
		case strings.HasPrefix(f, "p"):
			w.prio, _ = strconv.Atoi(f[1:])
		}
	}
	return w
}

// decision is what the requests before one make of it.
type decision struct {
	granted bool
	targets []string // keys whose change may grant it
}

// decide applies the rules of the queue to a request and the requests
// created before it, in create order.
func decide(me waiter, lower []waiter) decision {
	if me.shared {
		for i := len(lower) - 1; i >= 0; i-- {
			if !lower[i].shared {
				return decision{targets: []string{lower[i].key}}
			}
		}
		return decision{granted: true}
	}
	switch n := len(lower); {
	case n < me.limit:
		return decision{granted: true}
	case n == me.limit:
		// The first waiter of a semaphore: any holder may let it in.
		d := decision{}
		for _, w := range lower {
			d.targets = append(d.targets, w.key)
		}
		return d
	default:
		return decision{targets: []string{lower[n-1].key}}
	}
}

// errGone: a waiting request's own key is gone.
var errGone = errors.New("lmx/etcd: the request's key is gone")

// gone is the error of a request whose key went while it waited: with its
// session, or by a ForceUnlock that found it granted before it knew.
func (lk *Locker) gone(s *session, me waiter) error {
	select {
	case <-s.done:
		return s.err()
	default:
	}
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	reason, err := lk.word(ctx, s, me.key, me.rev)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %w: as it was granted", lmx.ErrLeaseLost, reason)
}

// word takes from s's inbox the word about its request etcdKey created at
// rev, and returns why the request's key went: ErrSessionLost without one.
func (lk *Locker) word(ctx context.Context, s *session, etcdKey string, rev int64) (reason, err error) {
	key := inboxKey(lk.pfx, s.hex, etcdKey, rev)
	resp, err := lk.cli.Delete(ctx, key, clientv3.WithPrevKV())
	if err != nil {
		return nil, lk.wrap(ctx, err)
	}
	lk.forget(s, key)
	return why(resp.PrevKvs), nil
}

// lower reads the requests of queue created before me, in create order, at
// a revision at least from, and returns them and that revision. For a mutex
// only the last one counts. It fails with errGone when me is gone, and with
// errRecord when the queue has a grant record.
func (lk *Locker) lower(ctx context.Context, queue string, me waiter, from int64) ([]waiter, int64, error) {
	opts := append(newest(me, 2), clientv3.WithMaxCreateRev(me.rev))
	get := func(serializable ...clientv3.OpOption) (*clientv3.TxnResponse, error) {
		return lk.cli.Txn(ctx).Then(
			clientv3.OpGet(queue, append(opts, serializable...)...),
			clientv3.OpGet(lk.grantsKey(queue), serializable...)).Commit()
	}
	// A serializable read is served by the member the client talks to,
	// without a round through raft; it will do when that member has seen
	// what woke the waiter, and a linearizable read is the fallback.
	resp, err := get(clientv3.WithSerializable())
	if err != nil || resp.Header.Revision < from {
		if resp, err = get(); err != nil {
			return nil, 0, err
		}
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	switch {
	case len(kvs) == 0 || string(kvs[0].Key) != me.key || kvs[0].CreateRevision != me.rev:
		return nil, 0, errGone
	case len(resp.Responses[1].GetResponseRange().Kvs) > 0:
		return nil, 0, errRecord
	}
	return decodeLower(kvs[1:]), resp.Header.Revision, nil
}

// newest are the options of a read of a queue's requests newest first: for
// me a mutex, only the n newest, since only the last one before me counts.
func newest(me waiter, n int64) []clientv3.OpOption {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend)}
	if !me.shared && me.limit == 1 {
		opts = append(opts, clientv3.WithLimit(n))
	}
	return opts
}

// decodeLower turns requests read newest first into waiters in create order.
func decodeLower(kvs []*mvccpb.KeyValue) []waiter {
	lower := make([]waiter, len(kvs))
	for i, kv := range kvs {
		lower[len(lower)-1-i] = decode(kv)
	}
	return lower
}

// abandon deletes a request's key of session s, created at rev (0:
// whatever request it holds), without relying on any caller's ctx. When
// etcd does not answer, the key is kept in lk.orphans and deleted once it
// does, so that it never stays queued for as long as the session lives.
func (lk *Locker) abandon(s *session, etcdKey string, rev int64) {
	ctx, cancel := context.WithTimeout(lk.ctx, 2*time.Second)
	err := lk.deleteRequest(ctx, etcdKey, rev)
	cancel()
	if err == nil || lk.ctx.Err() != nil {
		return
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	select {
	case <-s.done:
		return // etcd drops the key with the session
	default:
	}
	if lk.orphans == nil {
		lk.orphans = map[string]orphan{}
	}
	if len(lk.orphans) == 0 {
		lk.wg.Go(lk.deleteOrphans)
	}
	lk.orphans[etcdKey] = orphan{sess: s.id, rev: rev}
}

// deleteRequest deletes etcdKey if it is still the request created at rev
// (any request if rev is 0).
func (lk *Locker) deleteRequest(ctx context.Context, etcdKey string, rev int64) error {
	if rev == 0 {
		_, err := lk.cli.Delete(ctx, etcdKey)
		return err
	}
	_, err := lk.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(etcdKey), "=", rev)).
		Then(clientv3.OpDelete(etcdKey)).
		Commit()
	return err
}
