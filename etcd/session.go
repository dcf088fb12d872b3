package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/internal/orphans"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A session is a Locker's etcd lease: what its requests and leases hang on,
// and what ends them all when etcd stops hearing the Locker.

// orphan is a request's key that etcd did not delete when asked.
type orphan struct {
	sess clientv3.LeaseID // the session it is attached to
	rev  int64            // its create revision, or 0 if unknown
}

// session is one etcd lease and what hangs on it.
type session struct {
	id     clientv3.LeaseID
	hex    string        // id as it is written into request values and inbox keys
	done   chan struct{} // closed when the session ends
	reason error         // why, set before done closes
	leases map[string]*lease
	owned  map[string]*lease  // the leases asked with Owner, by queue and owner
	slots  map[string][]bool  // by queue, the slots in use (guarded by lk.mu)
	early  map[string]string  // words heard before their lease was made, by inbox key (guarded by lk.mu)
	stop   context.CancelFunc // stops the inbox watch
}

// session returns the current session, starting one if need be. One caller
// starts it while the others wait for it or for their ctx. The etcd round
// trip that starts it runs without lk.mu and ends with Close, so a slow or
// unreachable etcd holds up only the callers that need a session, never
// Close or the leases of the session that ended.
func (lk *Locker) session(ctx context.Context) (*session, error) {
	for {
		lk.mu.Lock()
		if lk.closed {
			lk.mu.Unlock()
			return nil, lmx.ErrClosed
		}
		if s := lk.sess; s != nil {
			lk.mu.Unlock()
			return s, nil
		}
		wait := lk.starting
		if wait == nil {
			break // lk.mu is held
		}
		lk.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	done := make(chan struct{})
	lk.starting = done
	lk.mu.Unlock()

	gctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lk.ctx, cancel)
	g, err := lk.cli.Grant(gctx, lk.ttl)
	stop()
	cancel()
	lk.mu.Lock()
	lk.starting = nil
	close(done) // the waiters see what follows once lk.mu is free
	if lk.closed {
		lk.mu.Unlock()
		if err == nil {
			lk.revoke(g.ID)
		}
		return nil, lmx.ErrClosed
	}
	defer lk.mu.Unlock()
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, unreachable(err)
	}
	ka, err := lk.cli.KeepAlive(lk.ctx, g.ID)
	if err != nil {
		return nil, unreachable(err)
	}
	sctx, scancel := context.WithCancel(lk.ctx)
	s := &session{id: g.ID, hex: strconv.FormatInt(int64(g.ID), 16), done: make(chan struct{}),
		leases: map[string]*lease{}, owned: map[string]*lease{}, slots: map[string][]bool{}, early: map[string]string{}, stop: scancel}
	lk.sess = s
	lk.wg.Go(func() {
		for range ka {
		}
		lk.sessionLost(s)
	})
	// Nothing is written into the inbox before this session's first
	// request, which follows the Grant: watching from the Grant's revision
	// misses nothing.
	lk.wg.Go(func() { lk.watchInbox(sctx, s, g.ResponseHeader.Revision+1) })
	return s, nil
}

// unreachable is the error of a request that etcd did not answer: the
// Locker cannot keep a session with it.
func unreachable(err error) error {
	return fmt.Errorf("%w: lmx/etcd: %v", lmx.ErrSessionLost, err)
}

// revoke asks etcd to drop the session id and its keys, waiting at most 5s.
func (lk *Locker) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lk.cli.Revoke(ctx, id)
}

// sessionLost ends s after its keepalive stopped.
func (lk *Locker) sessionLost(s *session) {
	lk.mu.Lock()
	if lk.sess == s {
		lk.sess = nil
	}
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		lk.endSession(s, lmx.ErrClosed)
	} else {
		lk.endSession(s, lmx.ErrSessionLost)
	}
}

// endSession ends every lease of s with reason and wakes its waiters.
func (lk *Locker) endSession(s *session, reason error) {
	lk.mu.Lock()
	select {
	case <-s.done:
		lk.mu.Unlock()
		return
	default:
	}
	s.reason = reason
	close(s.done)
	s.stop()
	leases := s.leases
	s.leases, s.owned = map[string]*lease{}, map[string]*lease{}
	for k, o := range lk.orphans {
		if o.sess == s.id {
			delete(lk.orphans, k) // etcd drops them with the session
		}
	}
	lk.mu.Unlock()
	for _, l := range leases {
		l.stopTimers()
		l.end(reason)
	}
}

// wrap returns ctx.Err() itself when ctx ended, ErrClosed after Close, and
// otherwise err as an lmx error: one etcd refused or did not answer is
// ErrSessionLost.
func (lk *Locker) wrap(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	lk.mu.Lock()
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		return lmx.ErrClosed
	}
	return unreachable(err)
}

// err is why the session ended: ErrSessionLost while it has not.
func (s *session) err() error {
	<-s.done // the request's key went with the session: done is closing
	if errors.Is(s.reason, lmx.ErrClosed) {
		return lmx.ErrClosed
	}
	return fmt.Errorf("%w: %w", lmx.ErrSessionLost, s.reason)
}

// takeSlot returns the lowest slot of queue that s does not use, now in
// use.
func (lk *Locker) takeSlot(s *session, queue string) int {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	used := s.slots[queue]
	n := slices.Index(used, false)
	if n < 0 {
		n = len(used)
		used = append(used, false)
	}
	used[n] = true
	s.slots[queue] = used
	return n
}

// inUseLocked reports whether the slot of the request etcdKey of s is in
// use: by a Lock under way, or a lease.
func (s *session) inUseLocked(pfx, etcdKey string) bool {
	q, ok := queuePrefix(pfx, etcdKey)
	i := strings.LastIndexByte(etcdKey, '.')
	if !ok || i < len(q) {
		return false
	}
	n, err := strconv.Atoi(etcdKey[i+1:])
	used := s.slots[q]
	return err == nil && n < len(used) && used[n]
}

// freeSlot gives slot n of queue back to s.
func (lk *Locker) freeSlot(s *session, queue string, n int) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	s.freeSlotLocked(queue, n)
}

func (s *session) freeSlotLocked(queue string, n int) {
	used := s.slots[queue]
	if n >= len(used) {
		return
	}
	used[n] = false
	for len(used) > 0 && !used[len(used)-1] {
		used = used[:len(used)-1]
	}
	if len(used) == 0 {
		delete(s.slots, queue)
	} else {
		s.slots[queue] = used
	}
}

// deleteOrphans deletes the keys of lk.orphans until none is left, trying
// again with a backoff while etcd does not answer.
func (lk *Locker) deleteOrphans() {
	orphans.TakeBack(lk.ctx, &lk.mu, &lk.orphans, func(ctx context.Context, k string, o orphan) error {
		return lk.deleteRequest(ctx, k, o.rev)
	})
}
