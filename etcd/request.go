package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A Lock's request: written into its key's queue with a read of what
// decides it, then waited on until the requests before it allow it.

func (lk *Locker) lock(ctx context.Context, key string, opts []lmx.LockOption, try bool) (*lmx.Lease, error) {
	queue, err := lk.queueOf(key)
	if err != nil {
		return nil, err
	}
	req, err := lmx.ParseLockOptions(opts...)
	if err != nil {
		return nil, err
	}
	if err := unsupported(req); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.Owner != "" {
		if l, err := lk.reenter(ctx, key, queue, req); l != nil || err != nil {
			return l, err
		}
	}
	me := waiter{id: ulid.Make(), limit: req.Limit, shared: req.Shared, owner: req.Owner, delay: max(0, req.LockDelay),
		prio: req.Priority, noPre: req.NoPreempt}
	write := lk.write
	switch {
	case req.Priority != 0 || req.Preempt >= 0:
		write = lk.writeRanked
	case req.Owner != "":
		write = lk.writeOwned
	}
	q, err := lk.enqueue(ctx, queue, me, write)
	if err != nil {
		return nil, err
	}
	defer q.free(lk)
	if err := ctx.Err(); err != nil {
		lk.abandon(q.s, q.me.key, q.me.rev) // ctx ended while the txn ran on lk.ctx
		return nil, err
	}
	if q.first != nil && q.first.limit != me.limit {
		lk.abandon(q.s, q.me.key, q.me.rev)
		return nil, fmt.Errorf("%w: key %q has Limit(%d), asked %d", lmx.ErrLimitMismatch, key, q.first.limit, me.limit)
	}
	if q.ranked {
		return lk.awaitRanked(ctx, key, req, q, try)
	}
	return lk.await(ctx, key, req, q, try)
}

// queued is a request written into its key's queue, with what the write
// read of the queue.
type queued struct {
	queue  string
	s      *session
	me     waiter
	slot   int      // me's slot of s while the Lock owns it, or -1
	taken  []int    // slots of s whose names etcd still had: unused until the Lock returns
	first  *waiter  // the queue's first request, when it was not empty
	lower  []waiter // the requests before me, in create order
	ranked bool     // decided on the whole queue and its grant record
}

// free gives s back the slots that q's Lock still owns.
func (q *queued) free(lk *Locker) {
	if q.s == nil {
		return
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if q.slot >= 0 {
		q.s.freeSlotLocked(q.queue, q.slot)
		q.slot = -1
	}
	for _, n := range q.taken {
		q.s.freeSlotLocked(q.queue, n)
	}
	q.taken = nil
}

// enqueue writes me into queue as a request of the Locker's session, on
// the lowest slot free, with write (write, writeRanked or writeOwned),
// which reads what decides it in the same transaction. When it fails, the
// slots it took are free again, but for one whose request etcd may hold:
// that one stays in use while the session lives.
func (lk *Locker) enqueue(ctx context.Context, queue string, me waiter, write func(*queued) (bool, error)) (*queued, error) {
	q := &queued{queue: queue, slot: -1}
	for attempt := 0; ; {
		s, err := lk.session(ctx)
		if err != nil {
			q.free(lk)
			return nil, err
		}
		if s != q.s {
			q.free(lk) // the slots of a session that ended
			q.s = s
		}
		q.slot = lk.takeSlot(s, queue)
		q.me = me
		q.me.key, q.me.sess, q.me.lease = queue+s.hex+"."+strconv.Itoa(q.slot), s.hex, s.id
		written, err := write(q)
		switch {
		case err == nil && written:
			return q, nil
		case err == nil:
			// The name is still taken: by a lock-delay's marker, or by a
			// request etcd did not delete when asked. It stays out of use
			// until the Lock returns, and the next slot is tried.
			q.taken, q.slot = append(q.taken, q.slot), -1
		case errors.Is(err, lmx.ErrInvalidOption):
			q.free(lk) // refused before anything was written
			return nil, err
		case errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
			// The session ended before its keepalive noticed: start another.
			attempt++
			lk.sessionLost(s)
		default:
			// Whether the Put landed, etcd did not say: the name is deleted
			// whatever request it holds, so its slot stays in use while s
			// lives, and no later request of s can be on it.
			lk.abandon(s, q.me.key, 0)
			q.slot = -1
			q.free(lk)
			return nil, lk.wrap(ctx, err)
		}
	}
}

// write puts q.me into its queue if its name is free, in a transaction that
// reads what decides it: nothing more when the queue is empty (q.me is its
// only request), and otherwise the queue's first request, for its limit,
// the requests before q.me, and the queue's grant record, with which q.me
// is ranked. It reports whether the name was free.
func (lk *Locker) write(q *queued) (bool, error) {
	me := q.me
	put := clientv3.OpPut(me.key, encodeValue(me), clientv3.WithLease(me.lease))
	first := clientv3.OpGet(q.queue, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	// Not ctx: a Put cut short may still land after the Delete that would
	// undo it, and leave the key held. An etcd that does not answer for as
	// long as a session lives has lost the session.
	ctx, cancel := context.WithTimeout(lk.ctx, time.Duration(lk.ttl)*time.Second)
	defer cancel()
	resp, err := lk.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(q.queue), "=", 0).WithPrefix()).
		Then(put).
		Else(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(me.key), "=", 0)},
			[]clientv3.Op{put, first, clientv3.OpGet(q.queue, newest(me, 2)...), // me, then the requests before me
				clientv3.OpGet(lk.grantsKey(q.queue))},
			nil)).
		Commit()
	if err != nil {
		return false, err
	}
	q.me.rev, q.me.mod = resp.Header.Revision, resp.Header.Revision
	if resp.Succeeded {
		return true, nil
	}
	in := resp.Responses[0].GetResponseTxn()
	if !in.Succeeded {
		return false, nil
	}
	if first := in.Responses[1].GetResponseRange().Kvs; len(first) == 1 {
		f := decode(first[0])
		q.first = &f
	}
	q.lower = decodeLower(in.Responses[2].GetResponseRange().Kvs[1:])
	q.ranked = len(in.Responses[3].GetResponseRange().Kvs) > 0
	return true, nil
}

// await waits until the requests before q's allow it, and then makes its
// lease; with try, it gives up at once instead of waiting.
func (lk *Locker) await(ctx context.Context, key string, req lmx.LockRequest, q *queued, try bool) (*lmx.Lease, error) {
	s, me := q.s, q.me
	// me is the newest request of the write's read: none is created after
	// it at its own revision. The first decision holds at me.rev.
	lower, rev := q.lower, me.rev
	w := newWaits(lk, s, me.limit == 1)
	defer w.stop()
	for {
		// Every decision is made on a read that found me's own key still
		// queued (the txn that wrote it, or lower): a key that went, with
		// its session's etcd lease behind a link that stalled, is never
		// granted, whatever woke its waiter.
		d := decide(me, lower)
		if d.granted {
			return lk.grantOf(s, key, q, me, req, me.rev, true)
		}
		if try {
			lk.abandon(s, me.key, me.rev)
			return nil, lmx.ErrLocked
		}
		// Each target is watched from when its watch was made: a watch made
		// after rev leaves a gap, and the queue is read again once it runs.
		from, err := w.watch(ctx, d.targets)
		if err == nil && from <= rev {
			select {
			case <-w.wake:
				from = w.seen()
			case <-ctx.Done():
				err = ctx.Err()
			case <-s.done:
				return nil, s.err()
			}
		}
		if err == nil {
			lower, rev, err = lk.lower(ctx, q.queue, me, from)
		}
		switch {
		case errors.Is(err, errGone):
			return nil, lk.gone(s, me)
		case errors.Is(err, errRecord):
			w.stop()
			return lk.awaitRanked(ctx, key, req, q, try)
		case err != nil:
			lk.abandon(s, me.key, me.rev)
			return nil, lk.wrap(ctx, err)
		}
	}
}
