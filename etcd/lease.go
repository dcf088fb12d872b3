package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A lease is one grant held through a Locker: its Unlock, Extend, expiry
// and KeepOnDisconnect, and how it ends.

// reenter grants key at once to req's owner if it holds key through this
// Locker: a new lmx.Lease with the same lock id and token, counted by the
// lease it re-enters. It returns nil and no error when the owner holds
// nothing here; an owner that holds key through another Locker, a process
// of its own, re-enters through the queue (writeOwned).
func (lk *Locker) reenter(ctx context.Context, key, queue string, req lmx.LockRequest) (*lmx.Lease, error) {
	s, err := lk.session(ctx)
	if err != nil {
		return nil, err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	l := s.owned[queue+req.Owner]
	if l == nil || s.leases[l.etcdKey] != l {
		return nil, nil
	}
	if l.shared && !req.Shared {
		return nil, fmt.Errorf("%w: owner %q holds %q shared and cannot re-enter exclusive", lmx.ErrInvalidOption, req.Owner, key)
	}
	g, end := lmx.NewLease(key, l.lease.ID(), l.lease.Token(), l.lease.Expires(), l)
	l.count++
	l.ends = append(l.ends, end)
	l.grants = append(l.grants, g)
	if l.revoked {
		lmx.RevokeLease(g)
	}
	return g, nil
}

// granted makes the lease of a granted request, with token; touch: a
// semaphore's key is written again, to tell the request behind it.
func (lk *Locker) granted(s *session, key, queue string, me waiter, req lmx.LockRequest, slot int, token int64, touch bool) (*lmx.Lease, error) {
	l := &lease{lk: lk, s: s, etcdKey: me.key, queue: queue, slot: slot, rev: me.rev, owner: req.Owner, shared: me.shared, count: 1,
		gone: make(chan struct{}), me: me, leaseID: s.id, mod: me.mod}
	var exp time.Time
	if req.TTL > 0 {
		exp = time.Now().Add(req.TTL)
	}
	var end func(error) bool
	if h := granting.Load(); h != nil {
		(*h)()
	}
	// Before anything of l compares the key's last write with l's.
	switch {
	case req.KeepOnDisconnect:
		err := l.keep(req.TTL)
		if errors.Is(err, errGone) {
			return nil, lk.gone(s, me)
		}
		if err != nil {
			lk.abandon(s, me.key, me.rev)
			return nil, err
		}
	case touch && me.limit > 1:
		if !l.touch() {
			return nil, lk.gone(s, me)
		}
	}
	l.lease, end = lmx.NewLease(key, me.id, uint64(token), exp, l)
	l.ends = []func(error) bool{end}
	lk.mu.Lock()
	select {
	case <-s.done:
		lk.mu.Unlock()
		return nil, s.err()
	default:
	}
	l.grants = []*lmx.Lease{l.lease}
	if word, ok := s.early[l.inboxKey()]; ok && word != whyRevoked {
		// A Release or ForceUnlock took the key as it was granted, and
		// its word came first.
		lk.mu.Unlock()
		return nil, lk.gone(s, me)
	} else if ok {
		// A preemptor asked it to make way before it was granted.
		delete(s.early, l.inboxKey())
		l.revokeLocked()
		lk.wg.Go(l.dropAsk)
	}
	s.leases[me.key] = l
	if l.owner != "" {
		s.owned[queue+l.owner] = l
	}
	l.mu.Lock()
	if req.TTL > 0 {
		l.timer = time.AfterFunc(req.TTL, l.expire)
	}
	l.mu.Unlock()
	lk.mu.Unlock()
	if req.KeepAlive > 0 {
		lmx.KeepAliveLease(l.lease, req.TTL, req.KeepAlive)
	}
	return l.lease, nil
}

// revokeLocked closes the Revoked channel of every grant of l, and of
// those to come: a preemptor asked it to make way.
func (l *lease) revokeLocked() {
	l.revoked = true
	for _, g := range l.grants {
		lmx.RevokeLease(g)
	}
}

// dropAsk deletes a preemptor's ask to make way from l's inbox, read
// before l was made, unless a word that takes the key replaced it.
func (l *lease) dropAsk() {
	ctx, cancel := context.WithTimeout(l.lk.ctx, 5*time.Second)
	defer cancel()
	k := l.inboxKey()
	l.lk.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(k), "=", whyRevoked)).Then(clientv3.OpDelete(k)).Commit()
}

// touch writes the key of l, a semaphore's, again as it is, to tell the
// request behind it that it may be the first waiter (keep's write does so
// too). It reports false when the key is not l's request any more: it went
// with the session, or a Release or ForceUnlock took it as it was granted.
func (l *lease) touch() bool {
	ctx, cancel := context.WithTimeout(l.lk.ctx, 5*time.Second)
	defer cancel()
	resp, err := l.lk.cli.Txn(ctx).
		If(l.mine()...).
		Then(clientv3.OpPut(l.etcdKey, encodeValue(l.me), clientv3.WithIgnoreLease())).
		Commit()
	l.wrote(resp, err)
	return err != nil || resp.Succeeded
}

// lease is the etcd side of one granted request: of its lmx.Lease, and of
// those of its owner's re-entries.
type lease struct {
	lk      *Locker
	s       *session
	etcdKey string
	queue   string     // the etcd prefix of the key's queue
	slot    int        // of s, on queue: l's own until l ends
	rev     int64      // the key's create revision: the token
	lease   *lmx.Lease // the first grant's
	owner   string
	shared  bool
	gone    chan struct{} // closed once end has ended every grant
	kept    bool          // KeepOnDisconnect: the key has an etcd lease of its own
	me      waiter        // the request, as it was written

	// Guarded by lk.mu.
	count   int                // grants not undone yet
	ends    []func(error) bool // each grant's end
	grants  []*lmx.Lease       // each grant
	revoked bool               // a preemptor asked it to make way
	endOnce sync.Once

	mu      sync.Mutex
	timer   *time.Timer      // expiry
	leaseID clientv3.LeaseID // the etcd lease of the key: while it is l's, l holds
	mod     int64            // the revision of l's last write of the key; 0: unknown
}

// end ends every grant of l with reason.
func (l *lease) end(reason error) {
	l.endOnce.Do(func() {
		l.lk.mu.Lock()
		ends := l.ends
		l.s.freeSlotLocked(l.queue, l.slot)
		l.lk.mu.Unlock()
		for _, end := range ends {
			end(reason)
		}
		close(l.gone)
	})
}

// keep gives l's key an etcd lease of its own, of ttl rounded up to a
// second, so that it outlives the session until about its TTL: this is
// KeepOnDisconnect. It fails with errGone when the key is not l's request
// any more.
func (l *lease) keep(ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(l.lk.ctx, time.Duration(l.lk.ttl)*time.Second)
	defer cancel()
	g, err := l.lk.cli.Grant(ctx, seconds(ttl))
	if err != nil {
		return l.lk.wrap(ctx, err)
	}
	resp, err := l.lk.cli.Txn(ctx).
		If(l.mine()...).
		Then(clientv3.OpPut(l.etcdKey, "", clientv3.WithIgnoreValue(), clientv3.WithLease(g.ID))).
		Commit()
	switch {
	case err != nil:
		return l.lk.wrap(ctx, err)
	case !resp.Succeeded:
		return errGone
	}
	l.kept = true
	l.mu.Lock()
	l.leaseID, l.mod = g.ID, resp.Header.Revision
	l.mu.Unlock()
	return nil
}

// wrote records the revision of a write of l's key made if mine: after an
// error, whether it landed is unknown.
func (l *lease) wrote(resp *clientv3.TxnResponse, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.mod = 0
	case resp.Succeeded:
		l.mod = resp.Header.Revision
	}
}

// mine is the condition that l's key is still l's request, not gone nor
// turned into a lock-delay's marker, nor a later request on the same name:
// that its last write is l's own, one read of the key for etcd, or when
// that write's revision is unknown, its create revision and etcd lease.
func (l *lease) mine() []clientv3.Cmp {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mod != 0 {
		return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(l.etcdKey), "=", l.mod)}
	}
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(l.etcdKey), "=", l.rev),
		clientv3.Compare(clientv3.LeaseValue(l.etcdKey), "=", l.leaseID),
	}
}

// endOp is the operation that ends the granted request w: its deletion,
// or with a LockDelay, its turning into a marker that holds the key until
// an etcd lease of the delay, rounded up to a second, runs out.
func (lk *Locker) endOp(ctx context.Context, w waiter) (clientv3.Op, error) {
	if w.delay <= 0 {
		return clientv3.OpDelete(w.key), nil
	}
	g, err := lk.cli.Grant(ctx, seconds(w.delay))
	if err != nil {
		return clientv3.Op{}, err
	}
	w.marker = true
	return clientv3.OpPut(w.key, encodeValue(w), clientv3.WithLease(g.ID)), nil
}

// seconds is d in whole seconds, rounded up: an etcd lease's TTL.
func seconds(d time.Duration) int64 { return max(1, int64((d+time.Second-1)/time.Second)) }

// released marks l as ended by the Unlock of its last grant, which the
// lmx.Lease then ends itself.
func (l *lease) released() {
	l.endOnce.Do(func() {
		l.lk.freeSlot(l.s, l.queue, l.slot)
		close(l.gone)
	})
}

// take takes l out of its session and stops its timers; it reports whether
// l was still there. Whoever takes a lease out ends it: a caller that finds
// it gone waits for l.gone.
func (l *lease) take() bool {
	l.lk.mu.Lock()
	here := l.s.leases[l.etcdKey] == l
	if here {
		delete(l.s.leases, l.etcdKey)
		if l.owner != "" && l.s.owned[l.queue+l.owner] == l {
			delete(l.s.owned, l.queue+l.owner)
		}
	}
	l.lk.mu.Unlock()
	if here {
		l.stopTimers()
	}
	return here
}

func (l *lease) stopTimers() {
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
}

// expire ends l when its TTL ran out.
func (l *lease) expire() {
	if !l.take() {
		return
	}
	if h := expiring.Load(); h != nil {
		(*h)()
	}
	// Delete first, as a broker would expire the key before telling the
	// holder, so that the key is free when Done closes; but never keep the
	// holder believing past a second.
	ctx, cancel := context.WithTimeout(l.lk.ctx, time.Second)
	end, err := l.lk.endOp(ctx, l.me)
	if err == nil {
		_, err = l.lk.cli.Txn(ctx).
			If(l.mine()...).
			Then(end, clientv3.OpPut(l.inboxKey(), whyExpired, clientv3.WithLease(l.s.id))).
			Commit()
	}
	cancel()
	l.end(lmx.ErrExpired)
	if err != nil {
		l.lk.abandon(l.s, l.etcdKey, l.rev)
	}
}

// granting, if set, is called by a grant before it writes its key (a
// semaphore's, or KeepOnDisconnect's): a test's window onto a ForceUnlock
// that takes the key as it is granted.
var granting atomic.Pointer[func()]

// expiring, if set, is called by an expiry once it has taken its lease out
// of the session and before it deletes the key: a test's window onto the
// race of an Unlock with the expiry.
var expiring atomic.Pointer[func()]

// Unlock implements lmx.LeaseBackend: it undoes one grant, and releases
// the key with the last.
func (l *lease) Unlock(ctx context.Context, _ *lmx.Lease) error {
	l.lk.mu.Lock()
	if l.count > 1 && l.s.leases[l.etcdKey] == l {
		l.count--
		l.lk.mu.Unlock()
		return nil
	}
	l.lk.mu.Unlock()
	if !l.take() {
		// Its expiry, its session's end or a word from its inbox took it
		// out and is ending it: Unlock reports why once it has.
		<-l.gone
		return lmx.ErrNotHeld
	}
	if ctx.Err() != nil {
		l.released()
		l.lk.wg.Go(func() { l.lk.abandon(l.s, l.etcdKey, l.rev) })
		return ctx.Err()
	}
	resp, err := l.lk.cli.Txn(ctx).If(l.mine()...).Then(clientv3.OpDelete(l.etcdKey)).Commit()
	if err != nil {
		l.lk.wg.Go(func() { l.lk.abandon(l.s, l.etcdKey, l.rev) })
		if ctx.Err() != nil {
			l.released()
			return ctx.Err()
		}
		// Released here and deleted once etcd answers, or with the
		// session; but whether the key was still l's until now, etcd did
		// not say: its session may have ended behind the link that failed.
		l.end(lmx.ErrSessionLost)
		return l.lk.wrap(ctx, err)
	}
	if !resp.Succeeded {
		// Release, ForceUnlock or the end of the session took the key
		// first: the word it left in the inbox says which. A key that is
		// still l's has none, so the release itself reads no inbox.
		reason, err := l.lk.word(ctx, l.s, l.etcdKey, l.rev)
		if err != nil {
			reason = lmx.ErrSessionLost
		}
		l.end(reason)
		return lmx.ErrNotHeld
	}
	l.released()
	return nil
}

// ended reports whether l has ended.
func (l *lease) ended() bool {
	select {
	case <-l.gone:
		return true
	default:
		return false
	}
}

// Extend implements lmx.LeaseBackend: the key must still be there.
func (l *lease) Extend(ctx context.Context, _ *lmx.Lease, ttl time.Duration) (time.Time, error) {
	var then []clientv3.Op
	var kept clientv3.LeaseID
	if l.kept { // the key's own etcd lease is extended too: a new one
		g, err := l.lk.cli.Grant(ctx, seconds(ttl))
		if err != nil {
			return time.Time{}, l.lk.wrap(ctx, err)
		}
		kept = g.ID
		then = append(then, clientv3.OpPut(l.etcdKey, "", clientv3.WithIgnoreValue(), clientv3.WithLease(g.ID)))
	}
	resp, err := l.lk.cli.Txn(ctx).
		If(l.mine()...).
		Then(then...).
		Else(clientv3.OpDelete(l.inboxKey(), clientv3.WithPrevKV())).
		Commit()
	if err != nil {
		if kept != 0 {
			l.wrote(nil, err) // the new etcd lease may be the key's now
		}
		return time.Time{}, l.lk.wrap(ctx, err)
	}
	if !resp.Succeeded {
		l.lk.forget(l.s, l.inboxKey())
		if l.take() {
			l.end(why(resp.Responses[0].GetResponseDeleteRange().PrevKvs))
		}
		<-l.gone
		return time.Time{}, lmx.ErrNotHeld
	}
	exp := time.Now().Add(ttl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if kept != 0 {
		l.leaseID, l.mod = kept, resp.Header.Revision
	}
	if l.ended() {
		return time.Time{}, lmx.ErrNotHeld
	}
	switch {
	case l.timer == nil:
		l.timer = time.AfterFunc(ttl, l.expire)
	case l.timer.Stop():
		l.timer.Reset(ttl)
	default: // expiring as we speak
		l.mu.Unlock()
		<-l.gone
		l.mu.Lock()
		return time.Time{}, lmx.ErrNotHeld
	}
	return exp, nil
}
