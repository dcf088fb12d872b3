package lmx

import (
	"context"
	"errors"
	"os"
	"runtime"
	"time"
)

// The read role: which goroutine reads the connection. See clientConn.

// idleRead is how long the read role may go unheld before the background
// reader takes it, which bounds how late a frame that answers no request
// (a lease's end, a revocation, a watch event) is read.
//
// A timer checks. Each time it fires it wakes a thread, which on a machine
// whose idle CPUs sleep costs a burst of calls milliseconds of round trips
// (it moves them off the CPU their peer runs on). So each check that finds
// calls still coming doubles the wait before the next, up to maxIdleWait,
// and the wait is back to idleRead once the background reader has taken the
// role.
const (
	idleRead    = time.Millisecond
	maxIdleWait = 100 * time.Millisecond
)

// bgReader stands for the background reader where a call holds the role.
var bgReader = new(call)

// roundTrip sends the frame f builds, under a fresh request id, as the call
// c, and waits for its reply. If ctx ends first it returns ctx.Err() at
// once; a queued Lock is cancelled at the broker, and a grant that arrives
// anyway is released. A Lock waits first for the answers to the Locks of
// its key given up (see gaveUp).
func (cc *clientConn) roundTrip(ctx context.Context, c call, f func([]byte, uint32) []byte) (reply, error) {
	cl := cc.newCall(c)
	id, err := cc.send(ctx, cl, f)
	if err != nil {
		cc.spare.Put(cl)
		return reply{}, err
	}
	if r, ok := cc.await(ctx, cl, id); ok {
		if !r.lost && cl.watch == nil {
			cc.spare.Put(cl) // nothing refers to it any more
		}
		return r, r.err
	}
	cc.abandon(cl, id)
	return reply{}, ctx.Err()
}

// send registers cl under a fresh request id, which it returns, and sends
// the frame f builds. A Lock waits first for the answers to the Locks of
// its key given up; it fails if ctx ends meanwhile, or if the session is
// lost.
func (cc *clientConn) send(ctx context.Context, cl *call, f func([]byte, uint32) []byte) (uint32, error) {
	cc.mu.Lock()
	for cl.lock && len(cc.gaveUp) > 0 && cc.err == nil {
		g := cc.gaveUp[cl.key]
		if g == nil {
			break
		}
		cc.mu.Unlock()
		select {
		case <-g.done:
		case <-cc.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		cc.mu.Lock()
	}
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		return 0, err
	}
	cc.nextID++
	if cc.nextID == 0 { // 0 is for frames that answer nothing
		cc.nextID++
	}
	id := cc.nextID
	cl.id = id
	cc.calls[id] = cl
	busy := len(cc.calls) > 1
	if cl.watch != nil { // its events may come before its answer
		cc.watches[id] = cl.watch
		cl.watch.done = func() { cc.unwatch(id) }
	}
	// The frame is queued under mu, so that the broker reads a Release
	// and a Cancel in the order in which they change the chain of named
	// Locks (see handOffLocked and unlink).
	added := cc.out.add(func(b []byte) []byte { return f(b, id) })
	if added && cl.release != nil {
		cc.handOffLocked(cl.release)
	}
	cc.mu.Unlock()
	if !added {
		cc.fail(cc.out.failure())
	}
	if busy {
		// Other calls are in flight: let their goroutines add their frames
		// too, so that one write carries them all.
		runtime.Gosched()
	}
	if err := cc.out.flush(); err != nil {
		cc.fail(err)
	}
	return id, nil
}

// abandon settles the call cl, sent as request id, whose caller's ctx
// ended before its reply came: a queued Lock or a Watch is cancelled at
// the broker, and a grant that raced ctx is released.
func (cc *clientConn) abandon(cl *call, id uint32) {
	cc.mu.Lock()
	_, pending := cc.calls[id]
	cl.abandoned = pending
	if pending && cl.lock {
		cc.giveUpLocked(cl.key)
	}
	cancel := pending && (cl.lock && cl.wait || cl.watch != nil)
	if cl.named {
		cc.unlink(cl)
	}
	if cancel {
		// Queued under mu: the broker reads it before any Release that
		// hands the key past cl (see unlink).
		cc.out.add(func(b []byte) []byte { return appendEmpty(b, opCancel, id) })
	}
	cc.waiting.remove(cl)
	if cc.reader == cl && cc.err == nil {
		cc.passRead()
	}
	cc.mu.Unlock()
	switch {
	case !pending: // the reply raced ctx
		r := <-cl.ch
		if r.turn { // passed on above
			r = <-cl.ch
		}
		if r.lease != nil {
			r.lease.Unlock(context.Background())
		}
	case cancel:
		if err := cc.out.flush(); err != nil {
			cc.fail(err)
		}
	}
}

// await waits for the reply to cl, sent as request id, reading it itself
// if no other goroutine is reading the connection. It reports false if ctx
// ended first; the caller then hands the read role on if it holds it.
func (cc *clientConn) await(ctx context.Context, cl *call, id uint32) (reply, bool) {
	for {
		select {
		case r := <-cl.ch:
			if !r.turn {
				return cc.got(cl, r), true
			}
		default:
		}
		cc.mu.Lock()
		if err := cc.err; err != nil {
			cc.mu.Unlock()
			return reply{err: err, lost: true}, true
		}
		interrupt := false
		if cc.calls[id] == cl { // else its reply is in cl.ch
			if !cc.waiting.has(cl) {
				// Only now, its frame written, may it be handed the read
				// role: a reader stuck writing could deadlock with a
				// broker stuck writing to it.
				cc.waiting.push(cl)
			}
			switch {
			case cc.reader == nil:
				cc.reader = cl
			case cc.reader == bgReader && cc.waiting.alone():
				interrupt = !cc.want.Swap(true)
			}
		}
		mine := cc.reader == cl
		cc.mu.Unlock()
		if mine {
			got, err := cc.readFor(ctx, cl)
			switch {
			case err != nil:
				cc.fail(err) // the reply, if it has not come, is the failure
			case !got:
				return reply{}, false
			default:
				cc.mu.Lock()
				cc.passRead()
				cc.mu.Unlock()
			}
			continue
		}
		if interrupt {
			cc.interrupt()
		}
		select {
		case r := <-cl.ch:
			if !r.turn {
				return cc.got(cl, r), true
			}
		case <-ctx.Done():
			return reply{}, false
		}
	}
}

// got returns r, the reply to cl. A reply handed on (see handOffLocked) may come
// while cl holds the read role, unread or with its turn still in cl.ch; cl
// then hands the role on.
func (cc *clientConn) got(cl *call, r reply) reply {
	if r.handed {
		cc.mu.Lock()
		if cc.reader == cl && cc.err == nil {
			cc.passRead()
		}
		cc.mu.Unlock()
	}
	return r
}

// readFor reads and dispatches frames, holding the read role, until cl's
// reply has come (got), ctx has ended, or, for the background reader (cl
// is bgReader), a caller wants the role. Before it gives up the role it
// dispatches the frames it has buffered whole.
func (cc *clientConn) readFor(ctx context.Context, cl *call) (got bool, err error) {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, cc.interrupt)
		defer stop()
	}
	for {
		// Renew the read deadline before looking at what would stop the
		// read: an interrupt sets those, then the deadline, so that it is
		// either seen here or makes the next read fail.
		cc.rdl.renew(cc.nc.SetReadDeadline, cc.timeout)
		if cl == bgReader && cc.want.Load() || ctx.Err() != nil {
			return false, nil
		}
		if len(cl.ch) > 0 { // a hand-off answered it
			return true, nil
		}
		h, p, err := cc.in.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(cc.rdl.at) {
				cc.rdl = deadline{} // interrupted, not timed out
				continue
			}
			return false, err
		}
		to, err := cc.dispatch(h, p)
		if err != nil {
			return false, err
		}
		if to != cl {
			continue
		}
		for {
			h, p, ok, err := cc.in.buffered()
			if !ok || err != nil {
				return true, err
			}
			if _, err := cc.dispatch(h, p); err != nil {
				return true, err
			}
		}
	}
}

// interrupt makes the read in progress, if any, fail at once.
func (cc *clientConn) interrupt() { cc.nc.SetReadDeadline(time.Unix(1, 0)) }

// passRead hands the read role on; the caller holds it and cc.mu. A call
// awaiting its reply alone gets it; with more than one waiting, the
// background reader does, for it reads on for all of them where a caller
// would hand the role on again at its reply, a goroutine hop each time.
// With none waiting, the background reader gets it at once if answers to
// given-up Locks are due (see gaveUp), which later Locks wait for, and
// otherwise once the role has gone unheld for idleRead (see idleTimeout).
func (cc *clientConn) passRead() {
	switch cl := cc.waiting.head; {
	case cl == nil && len(cc.gaveUp) == 0:
	case cc.waiting.alone():
		cc.reader = cl
		cl.ch <- reply{turn: true} // cl has no reply yet, and holds no turn
		return
	default:
		if cc.reader != bgReader {
			cc.reader = bgReader
			cc.bgTurn <- struct{}{}
		}
		return
	}
	cc.reader, cc.free = nil, time.Now()
	if !cc.idleSet { // a timer reset per call would cost more than the call
		cc.idleSet = true
		cc.idle.Reset(cc.idleWait)
	}
}

// idleTimeout gives the background reader the read role if nobody has held
// it for idleRead. If calls are still coming, it waits longer before it
// looks again.
func (cc *clientConn) idleTimeout() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.idleSet = false
	if cc.reader == bgReader || cc.err != nil {
		return
	}
	if cc.reader != nil || time.Since(cc.free) < idleRead {
		cc.idleWait = min(2*cc.idleWait, maxIdleWait)
		if cc.reader == nil {
			cc.idleSet = true
			cc.idle.Reset(cc.idleWait)
		} // else passRead sets the timer again
		return
	}
	cc.idleWait = idleRead
	cc.reader = bgReader
	cc.bgTurn <- struct{}{}
}

// background reads the connection while no caller does: for the frames
// that answer no request (a lease's end, a revocation, a watch event, a
// heartbeat's pong) and to notice a broker that has gone.
func (cc *clientConn) background() {
	for {
		select {
		case <-cc.bgTurn:
		case <-cc.done:
			return
		}
		for held := true; held; {
			if _, err := cc.readFor(context.Background(), bgReader); err != nil {
				cc.fail(err)
				return
			}
			cc.mu.Lock()
			cc.want.Store(false)
			if cc.err == nil {
				cc.passRead() // which may leave the role here
			}
			held = cc.reader == bgReader && cc.err == nil
			cc.mu.Unlock()
		}
	}
}

// flushAside has the heartbeat goroutine write what the outbox holds: for
// the read role's holder, which must never block writing. Over a
// connection without buffers (net.Pipe), or with a backlog past the
// kernel's both ways, a reader stuck writing deadlocks with a broker stuck
// writing to it, until the write deadline drops the session.
func (cc *clientConn) flushAside() {
	select {
	case cc.kick <- struct{}{}:
	default: // a flush is due already, and writes what was added since
	}
}
