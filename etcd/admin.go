package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	_ lmx.Admin  = (*Locker)(nil)
	_ lmx.Lister = (*Locker)(nil)
)

// queueOf returns the etcd prefix of key's queue, or an error for a key
// the backend refuses.
func (lk *Locker) queueOf(key string) (string, error) {
	if key == "" || len(key) > lmx.DefaultMaxKeyLen || strings.IndexByte(key, 0) >= 0 {
		return "", fmt.Errorf("%w: %d bytes (1..%d, no NUL)", lmx.ErrInvalidKey, len(key), lmx.DefaultMaxKeyLen)
	}
	return lk.pfx + key + "\x00", nil
}

// queuePrefix returns the queue of a request's etcd key under pfx, and
// false for an inbox's word (its key starts with NUL, as no lock key can)
// or a key that is not lmx's.
func queuePrefix(pfx, etcdKey string) (string, bool) {
	rel, ok := strings.CutPrefix(etcdKey, pfx)
	i := strings.IndexByte(rel, 0)
	if !ok || i <= 0 {
		return "", false
	}
	return etcdKey[:len(pfx)+i+1], true
}

// queue reads what the requests of a queue and its grant record make of it.
func (lk *Locker) queue(ctx context.Context, queue string) (*view, error) {
	resp, err := lk.cli.Txn(ctx).Then(lk.readOps(queue)...).Commit()
	if err != nil {
		return nil, lk.wrap(ctx, err)
	}
	return viewOf(queue, resp), nil
}

// preemptionsKey is the key each preemption writes again: its version
// counts them, for Stats.
func (lk *Locker) preemptionsKey() string { return lk.pfx + "\x00n/preemptions" }

// mark deletes a request's key, if it is still the request w, and in the
// same transaction writes why into the inbox of its Locker's session,
// under the etcd lease of the key, so that the word goes with the session;
// a preemption counts itself.
func (lk *Locker) mark(ctx context.Context, w waiter, why string) (bool, error) {
	end := clientv3.OpDelete(w.key)
	if why == whyForced { // Release ends a lease as its Unlock would: no delay
		var err error
		if end, err = lk.endOp(ctx, w); err != nil {
			return false, lk.wrap(ctx, err)
		}
	}
	then := []clientv3.Op{end, clientv3.OpPut(inboxKey(lk.pfx, w.sess, w.key, w.rev), why, clientv3.WithLease(w.lease))}
	if why == whyPreempted {
		then = append(then, clientv3.OpPut(lk.preemptionsKey(), ""))
	}
	resp, err := lk.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(w.key), "=", w.lease), clientv3.Compare(clientv3.CreateRevision(w.key), "=", w.rev)).
		Then(then...).
		Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return false, nil // the session ended, and its keys with it
	case err != nil:
		return false, lk.wrap(ctx, err)
	}
	return resp.Succeeded, nil
}

// Release ends the lease of key whose lock id is id, from any Locker on the
// same prefix; its holder sees lmx.ErrReleased.
func (lk *Locker) Release(ctx context.Context, key string, id ulid.ULID) error {
	return lk.endHeld(ctx, key, id.String(), whyReleased)
}

// ForceUnlock ends every lease of key with lmx.ErrForced.
func (lk *Locker) ForceUnlock(ctx context.Context, key string) error {
	return lk.endHeld(ctx, key, "", whyForced)
}

// endHeld marks with why and deletes the granted requests of key, only the one
// of lock id unless id is "". It fails with lmx.ErrNotHeld if none was.
func (lk *Locker) endHeld(ctx context.Context, key, id, why string) error {
	q, err := lk.queueOf(key)
	if err != nil {
		return err
	}
	v, err := lk.queue(ctx, q)
	if err != nil {
		return err
	}
	n := 0
	for i, w := range v.ws {
		if v.tokens[i] == 0 || w.marker || id != "" && w.id.String() != id {
			continue
		}
		ok, err := lk.mark(ctx, w, why)
		if err != nil {
			return err
		}
		if ok {
			n++
		}
	}
	if n == 0 {
		return lmx.ErrNotHeld
	}
	return nil
}

// Inspect describes key's holders and waiters as etcd has them, the
// waiters in the order they are to be granted. Count and Expires are known
// only for this Locker's own leases (else 1 and zero).
func (lk *Locker) Inspect(ctx context.Context, key string) (lmx.KeyInfo, error) {
	q, err := lk.queueOf(key)
	if err != nil {
		return lmx.KeyInfo{}, err
	}
	v, err := lk.queue(ctx, q)
	if err != nil {
		return lmx.KeyInfo{}, err
	}
	ki := lmx.KeyInfo{Key: key}
	if len(v.ws) > 0 {
		ki.Limit = v.ws[0].limit
	}
	for _, i := range v.order() {
		w := v.ws[i]
		ki.Waiters = append(ki.Waiters, lmx.WaiterInfo{Owner: w.owner, Priority: w.prio, Shared: w.shared})
	}
	for i, w := range v.ws {
		if v.tokens[i] == 0 {
			continue
		}
		h := lk.holderInfo(w, v.tokens[i])
		// An owner's re-entry through another Locker is a request of its
		// own, with the same lock id: one holder, counted.
		if j := slices.IndexFunc(ki.Holders, func(o lmx.HolderInfo) bool { return o.ID == h.ID }); j >= 0 {
			ki.Holders[j].Count += h.Count
			if ki.Holders[j].Expires.IsZero() {
				ki.Holders[j].Expires = h.Expires
			}
			continue
		}
		ki.Holders = append(ki.Holders, h)
	}
	return ki, nil
}

// holderInfo describes the holding request w, granted with token; with
// the count and expiry of its lease if it is this Locker's.
func (lk *Locker) holderInfo(w waiter, token int64) lmx.HolderInfo {
	h := lmx.HolderInfo{ID: w.id, Token: uint64(token), Owner: w.owner, Shared: w.shared, Count: 1, Since: ulid.Time(w.id.Time())}
	lk.mu.Lock()
	var l *lease
	if lk.sess != nil {
		l = lk.sess.leases[w.key]
	}
	if l != nil {
		h.Count = l.count
	}
	lk.mu.Unlock()
	if l != nil {
		h.Expires = l.lease.Expires()
	}
	return h
}

// Stats counts the keys, holders and waiters under the Locker's prefix, by
// reading them all, and the preemptions. The other counters of what
// happened are not kept (zero).
func (lk *Locker) Stats(ctx context.Context) (lmx.Stats, error) {
	keys, err := lk.keys(ctx, "", 0)
	if err != nil {
		return lmx.Stats{}, err
	}
	resp, err := lk.cli.Get(ctx, lk.preemptionsKey())
	if err != nil {
		return lmx.Stats{}, lk.wrap(ctx, err)
	}
	var st lmx.Stats
	if len(resp.Kvs) > 0 {
		st.Preemptions = uint64(resp.Kvs[0].Version)
	}
	for _, k := range keys {
		st.Keys++
		st.Holders += k.Holders
		st.Waiters += k.Waiters
	}
	return st, nil
}

// List returns the live keys that start with prefix, sorted, at most limit
// of them (lmx.DefaultListLimit when limit <= 0, at most lmx.MaxListLimit),
// by reading their queues.
func (lk *Locker) List(ctx context.Context, prefix string, limit int) ([]lmx.KeyStat, error) {
	switch {
	case limit <= 0:
		limit = lmx.DefaultListLimit
	case limit > lmx.MaxListLimit:
		limit = lmx.MaxListLimit
	}
	return lk.keys(ctx, prefix, limit)
}

// keys reads the queues of the keys that start with prefix and sums them
// up, in key order, at most limit of them unless limit is 0.
func (lk *Locker) keys(ctx context.Context, prefix string, limit int) ([]lmx.KeyStat, error) {
	if err := lk.live(); err != nil {
		return nil, err
	}
	reqs, records, _, err := lk.readUnder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	queues := map[string][]waiter{}
	for _, kv := range reqs {
		if q, ok := queuePrefix(lk.pfx, string(kv.Key)); ok {
			queues[q] = append(queues[q], decode(kv))
		}
	}
	var keys []lmx.KeyStat
	for q, ws := range queues {
		v := newView(ws, decodeRecord(q, records[q]))
		ks := lmx.KeyStat{Key: q[len(lk.pfx) : len(q)-1], Limit: ws[0].limit}
		for i := range ws {
			switch {
			case v.tokens[i] != 0:
				ks.Holders++
			case v.waiting(i):
				ks.Waiters++
			}
		}
		keys = append(keys, ks)
	}
	slices.SortFunc(keys, func(a, b lmx.KeyStat) int { return strings.Compare(a.Key, b.Key) })
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
	}
	return keys, nil
}

// live fails with lmx.ErrClosed once the Locker is closed.
func (lk *Locker) live() error {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed {
		return lmx.ErrClosed
	}
	return nil
}
