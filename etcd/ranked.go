package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Requests decided on the whole queue and its grant record (grants.go):
// the arrival of a request with a Priority or a Preempt ask, and the wait
// of any request once its queue has a record.

// errRecord: a waiter's read found a grant record, and it waits on the
// whole queue from then on.
var errRecord = errors.New("lmx/etcd: the queue has a grant record")

// readAll reads queue's requests in create order and its grant record, at
// a revision at least from, and returns what they make of it and that
// revision: a serializable read first, as lower does.
func (lk *Locker) readAll(ctx context.Context, queue string, from int64) (*view, int64, error) {
	resp, err := lk.cli.Txn(ctx).Then(lk.readOps(queue, clientv3.WithSerializable())...).Commit()
	if err != nil || resp.Header.Revision < from {
		if resp, err = lk.cli.Txn(ctx).Then(lk.readOps(queue)...).Commit(); err != nil {
			return nil, 0, err
		}
	}
	return viewOf(queue, resp), resp.Header.Revision, nil
}

// readOps read queue's requests in create order and its grant record.
func (lk *Locker) readOps(queue string, opts ...clientv3.OpOption) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpGet(queue, append(opts, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))...),
		clientv3.OpGet(lk.grantsKey(queue), opts...),
	}
}

// viewOf is the view of a queue from a transaction whose first two
// responses read its requests and its record.
func viewOf(queue string, resp *clientv3.TxnResponse) *view {
	kvs := resp.Responses[0].GetResponseRange().Kvs
	ws := make([]waiter, len(kvs))
	for i, kv := range kvs {
		ws[i] = decode(kv)
	}
	rec := resp.Responses[1].GetResponseRange().Kvs
	if len(rec) == 0 {
		return newView(ws, decodeRecord(queue, nil))
	}
	return newView(ws, decodeRecord(queue, rec[0]))
}

// unchanged is the condition that the queue v was read from at rev is as
// it was, but for requests that left, and that no request left that made
// v what it is: the record was not written since, no request was written
// into the queue, and the requests that keep the queue in its mode, and in
// read mode its holders and first waiter, are still there.
func (lk *Locker) unchanged(queue string, v *view, rev int64) []clientv3.Cmp {
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(lk.grantsKey(queue)), "=", v.rec.mod),
		clientv3.Compare(clientv3.ModRevision(queue), "<", rev+1).WithPrefix(),
	}
	there := func(w waiter) {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(w.key), "=", w.rev))
	}
	if v.written {
		there(v.ws[0])
		return cmps
	}
	for i, w := range v.ws {
		there(w)
		if v.tokens[i] == 0 {
			break // the first waiter: when it leaves, those behind it may hold
		}
	}
	return cmps
}

// writeRanked puts q.me, a request with a Priority or a Preempt ask, into
// its queue if its name is free, and in the same transaction writes the
// queue's grant record: the holders it found, and q.me itself when it is
// the head of the queue and fits, or re-enters. It reports whether the
// name was free.
func (lk *Locker) writeRanked(q *queued) (bool, error) { return lk.writeAll(q, false) }

// writeOwned puts q.me, a request with an Owner, into its queue: as a
// re-entry, with the lock id and token of a holder of the same owner
// through another Locker, named in the grant record it writes as
// writeRanked does; without one, as write does, having read the queue once
// more than a request without an owner.
func (lk *Locker) writeOwned(q *queued) (bool, error) { return lk.writeAll(q, true) }

// errSharedOwner: an owner that holds a key shared asked it exclusive.
var errSharedOwner = fmt.Errorf("%w: an owner that holds a key shared cannot re-enter it exclusive", lmx.ErrInvalidOption)

func (lk *Locker) writeAll(q *queued, owned bool) (bool, error) {
	ctx, cancel := context.WithTimeout(lk.ctx, time.Duration(lk.ttl)*time.Second)
	defer cancel()
	for from := int64(0); ; {
		me := q.me // as asked: a try that re-entered changed its lock id
		v, rev, err := lk.readAll(ctx, q.queue, from)
		if err != nil {
			return false, err
		}
		if v.named(me.key) {
			return false, nil
		}
		j := v.heldBy(me.owner)
		switch {
		case owned && j < 0:
			return lk.write(q)
		case j >= 0 && v.ws[j].shared && !me.shared:
			return false, errSharedOwner
		}
		cmps := lk.unchanged(q.queue, v, rev)
		if j >= 0 { // the grant it re-enters, still there
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(v.ws[j].key), "=", v.ws[j].rev))
		}
		if len(v.ws) > 0 {
			q.first = &v.ws[0]
		}
		me.rev = arriving
		v.ws, v.tokens = append(v.ws, me), append(v.tokens, 0)
		n := len(v.ws) - 1
		grant, token := -1, int64(0)
		switch {
		case j >= 0:
			me.id = v.ws[j].id
			grant, token = n, v.tokens[j]
		case v.head() == n && v.fits(n):
			grant = n
		}
		resp, err := lk.cli.Txn(ctx).If(cmps...).Then(
			clientv3.OpPut(me.key, encodeValue(me), clientv3.WithLease(me.lease)),
			clientv3.OpPut(lk.grantsKey(q.queue), encodeRecord(q.queue, v.next(grant, token)))).Commit()
		if err != nil {
			return false, err
		}
		if resp.Succeeded {
			q.me.id, q.me.rev, q.me.mod, q.ranked = me.id, resp.Header.Revision, resp.Header.Revision, true
			return true, nil
		}
		from = rev + 1
	}
}

// heldBy returns a request of v that holds for owner, or -1.
func (v *view) heldBy(owner string) int {
	if owner == "" {
		return -1
	}
	for i, w := range v.ws {
		if v.tokens[i] != 0 && !w.marker && w.owner == owner {
			return i
		}
	}
	return -1
}

// named reports whether a request of v has the name etcdKey.
func (v *view) named(etcdKey string) bool {
	return slices.ContainsFunc(v.ws, func(w waiter) bool { return w.key == etcdKey })
}

// awaitRanked waits until q's request holds, deciding on the whole queue
// and its record: it claims its grant when it is the head of a queue in
// written mode and fits, and with a Preempt ask, preempts the holders in
// its way; with try, it gives up at once instead of waiting.
func (lk *Locker) awaitRanked(ctx context.Context, key string, req lmx.LockRequest, q *queued, try bool) (*lmx.Lease, error) {
	s, me := q.s, q.me
	w := newWaits(lk, s, false)
	defer w.stop()
	r := &ranked{lk: lk, req: req, queue: q.queue, w: w}
	defer r.stop()
	for from := me.rev; ; {
		v, rev, err := lk.readAll(ctx, q.queue, from)
		i := -1
		if err == nil {
			i = v.index(me)
		}
		var targets []string
		switch {
		case err != nil:
		case i < 0:
			return nil, lk.gone(s, me)
		case v.tokens[i] != 0:
			me.mod = v.ws[i].mod
			return lk.grantOf(s, key, q, me, req, v.tokens[i], !v.written)
		case !v.written:
			targets = decide(me, v.ws[:i]).targets
			lk.dropStale(q.queue, v)
		default:
			var mod int64
			mod, err = r.step(ctx, v, i, rev)
			if mod != 0 {
				me.mod = mod
				return lk.grantOf(s, key, q, me, req, mod, false)
			}
			if errors.Is(err, errChanged) {
				// Read again at once: what changed may be an arrival,
				// which wakes no waiter.
				from = rev + 1
				continue
			}
			targets = []string{q.queue, lk.grantsKey(q.queue)}
		}
		if err == nil && try {
			lk.abandon(s, me.key, me.rev)
			return nil, lmx.ErrLocked
		}
		if err == nil {
			from, err = r.wait(ctx, s, targets, rev)
		}
		switch {
		case errors.Is(err, errGone):
			return nil, lk.gone(s, me)
		case err != nil:
			lk.abandon(s, me.key, me.rev)
			return nil, lk.wrap(ctx, err)
		}
	}
}

// grantOf makes the lease of q's request, granted with token.
func (lk *Locker) grantOf(s *session, key string, q *queued, me waiter, req lmx.LockRequest, token int64, touch bool) (*lmx.Lease, error) {
	l, err := lk.granted(s, key, q.queue, me, req, q.slot, token, touch)
	if err == nil {
		q.slot = -1 // the lease's now
	}
	return l, err
}

// dropStale deletes the grant record of a queue back in read mode, if it
// is still the one v read, so that its FIFO waiters read no more than
// their own part of the queue again. Failing is harmless.
func (lk *Locker) dropStale(queue string, v *view) {
	if v.rec.mod == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(lk.ctx, time.Second)
	defer cancel()
	rk := lk.grantsKey(queue)
	lk.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(rk), "=", v.rec.mod),
		clientv3.Compare(clientv3.CreateRevision(queue), ">", v.rec.mod).WithPrefix(),
	).Then(clientv3.OpDelete(rk)).Commit()
}

// ranked is the state of one request's wait in written mode: its watches
// and its round of preemption.
type ranked struct {
	lk    *Locker
	req   lmx.LockRequest
	queue string
	w     *waits

	victims []waiter    // the holders a round of preemption revoked
	due     atomic.Bool // the round's grace is over
	timer   *time.Timer // ends the grace
}

func (r *ranked) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
}

// wait watches targets, and waits for a change after rev or the end of a
// round's grace; it returns the revision to read the queue at next.
func (r *ranked) wait(ctx context.Context, s *session, targets []string, rev int64) (int64, error) {
	from, err := r.w.watch(ctx, targets)
	if err != nil || from > rev || r.due.Load() {
		return max(from, rev), err
	}
	select {
	case <-r.w.wake:
		return r.w.seen(), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.done:
		return 0, errGone
	}
}

// step is what the waiter i of v, a queue in written mode read at rev,
// does: it ends the holders of a round whose grace is over, claims its
// grant when it is the head and fits (returning the claim's revision), or
// starts a round of preemption when it is the head and asked for one.
func (r *ranked) step(ctx context.Context, v *view, i int, rev int64) (int64, error) {
	if r.due.Load() {
		r.due.Store(false)
		victims := r.victims
		r.victims = nil
		return 0, r.lk.preempt(ctx, v, victims)
	}
	if v.head() != i {
		return 0, nil
	}
	if v.fits(i) {
		return r.lk.claim(ctx, r.queue, v, i, rev)
	}
	if r.req.Preempt < 0 || r.victims != nil {
		return 0, nil
	}
	victims := v.victims(i)
	if victims == nil {
		return 0, nil
	}
	ok, err := r.lk.askToYield(ctx, victims)
	if !ok || err != nil {
		return 0, err
	}
	r.victims = victims
	r.timer = time.AfterFunc(r.req.Preempt, func() {
		r.due.Store(true)
		r.w.poke()
	})
	return 0, nil
}

// errChanged: a claim found its queue changed since the read it was decided
// on.
var errChanged = errors.New("lmx/etcd: the queue changed")

// claim writes the grant of waiter i into the record, if the queue is as
// v has it at rev; it returns the write's revision, the grant's token, or
// errChanged. The request's key is written again as it is,
// so that a semaphore's waiter that watches it learns that it may be
// the first waiter.
func (lk *Locker) claim(ctx context.Context, queue string, v *view, i int, rev int64) (int64, error) {
	me := v.ws[i]
	resp, err := lk.cli.Txn(ctx).
		If(append(lk.unchanged(queue, v, rev), clientv3.Compare(clientv3.CreateRevision(me.key), "=", me.rev))...).
		Then(clientv3.OpPut(lk.grantsKey(queue), encodeRecord(queue, v.next(i, 0))),
			clientv3.OpPut(me.key, encodeValue(me), clientv3.WithIgnoreLease())).
		Commit()
	switch {
	case err != nil:
		return 0, err
	case !resp.Succeeded:
		return 0, errChanged
	}
	return resp.Header.Revision, nil
}

// askToYield asks the holders victims to make way: a word in the inbox of
// each one's session, which closes its leases' Revoked channels. It
// reports false when one of them is gone.
func (lk *Locker) askToYield(ctx context.Context, victims []waiter) (bool, error) {
	var cmps []clientv3.Cmp
	var puts []clientv3.Op
	for _, v := range victims {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(v.key), "=", v.rev))
		puts = append(puts, clientv3.OpPut(inboxKey(lk.pfx, v.sess, v.key, v.rev), whyRevoked, clientv3.WithLease(v.lease)))
	}
	resp, err := lk.cli.Txn(ctx).If(cmps...).Then(puts...).Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return false, nil // a session ended, and its keys with it
	case err != nil:
		return false, err
	}
	return resp.Succeeded, nil
}

// preempt ends with lmx.ErrPreempted those of victims that still hold in
// v, as ForceUnlock would but with no lock-delay.
func (lk *Locker) preempt(ctx context.Context, v *view, victims []waiter) error {
	for _, w := range victims {
		if i := v.index(w); i < 0 || v.tokens[i] == 0 {
			continue
		}
		if _, err := lk.mark(ctx, w, whyPreempted); err != nil {
			return err
		}
	}
	return nil
}
