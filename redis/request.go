package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
)

// request is one Lock or TryLock call under way, from the script that
// queues it to its grant or its end.
type request struct {
	lk    *Locker
	key   string
	id    ulid.ULID
	ids   string   // id as text: the request's lock id in Redis
	keys  []string // key's Redis keys
	req   lmx.LockRequest
	s     *session // the session it is queued under
	w     waiter
	rec   string    // its waiter record, as Redis has it
	start time.Time // when the script that last answered about it was sent
}

// enter makes r a waiter of lk, which Close waits for, unless lk is
// closed; leave undoes it.
func (lk *Locker) enter(r *request) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed {
		return false
	}
	lk.waiters[r.ids] = &r.w
	lk.calls.Add(1)
	return true
}

func (lk *Locker) leave(r *request) {
	lk.mu.Lock()
	delete(lk.waiters, r.ids)
	lk.mu.Unlock()
	lk.calls.Done()
}

// acquire runs the acquire script for r, once more under a new session if
// r's turned out dead in Redis.
func (r *request) acquire(ctx context.Context, try bool) (reply, error) {
	for attempt := 0; ; attempt++ {
		r.rec = r.lk.record(r.ids, r.s, r.req)
		// Not ctx: a script cut short may still run, and leave the request
		// queued; its outcome is needed to take it back.
		r.start = time.Now()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		v, err := r.lk.runOn(sctx, acquireScript, r.keys, r.key, r.ids, r.rec, r.req.Limit, flag(try, "1", "0"))
		cancel()
		var rep reply
		if err == nil {
			rep, err = parseReply(v)
		}
		if err != nil {
			r.takeBack()
			return reply{}, r.lk.wrap(ctx, err)
		}
		if rep.kind != "d" || attempt > 0 {
			return rep, nil
		}
		// The session expired (or Redis lost it) before the refresh
		// noticed: start another.
		r.lk.sessionLost(r.s, errors.New("the session key is gone"))
		if r.s, err = r.lk.session(ctx); err != nil {
			return reply{}, err
		}
	}
}

// await returns r's lease once a reply or a message says it is granted.
// Waiting, it looks again when a holder may end on its own (a little
// after, so that Redis's clock has passed it), and now and then against a
// lost message.
func (r *request) await(ctx context.Context, rep reply) (*lmx.Lease, error) {
	for {
		switch rep.kind {
		case "g":
			return r.granted(rep.token, time.Duration(rep.ms)*time.Millisecond)
		case "l":
			return nil, lmx.ErrLocked
		case "m":
			return nil, fmt.Errorf("%w: key %q has Limit(%d), asked %d", lmx.ErrLimitMismatch, r.key, rep.ms, r.req.Limit)
		case "n", "d":
			return nil, fmt.Errorf("%w: the request is no longer queued in Redis", lmx.ErrSessionLost)
		}
		if err := ctx.Err(); err != nil {
			r.takeBack()
			return nil, err
		}
		wait := r.lk.recheck/2 + rand.N(r.lk.recheck)
		if rep.ms >= 0 {
			wait = min(wait, time.Duration(rep.ms+2)*time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case g := <-r.w.granted:
			t.Stop()
			if r.s.sure(r.lk.ttl / 3) {
				return r.granted(g.token, g.ttl)
			}
			// The session has not been refreshed for a while: Redis may
			// have dropped it, and the grant with it, while the message
			// was on its way. Ask Redis.
		case <-r.w.look:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			r.takeBack()
			return nil, ctx.Err()
		case <-r.s.done:
			t.Stop()
			r.takeBack()
			return nil, r.s.err()
		}
		t.Stop()
		rep = r.poke()
	}
}

// poke asks Redis about r, reaping and granting first. When Redis is out
// of reach, r waits on: its session tells whether the request survives.
func (r *request) poke() reply {
	r.start = time.Now()
	ctx, cancel := context.WithTimeout(r.lk.ctx, 10*time.Second)
	defer cancel()
	v, err := r.lk.runOn(ctx, pokeScript, r.keys, r.key, r.ids, r.rec)
	if err == nil {
		if rep, err := parseReply(v); err == nil {
			return rep
		}
	}
	return reply{kind: "w", ms: -1}
}

// granted makes the lease of r, granted with token.
func (r *request) granted(token uint64, ttl time.Duration) (*lmx.Lease, error) {
	return r.lk.granted(r, token, ttl)
}

// takeBack takes r back from Redis (see Locker.takeBack).
func (r *request) takeBack() { r.lk.takeBack(r.key, r.ids, r.rec) }
