package lmx

import (
	"log/slog"
	"sync"
	"time"
)

// endLogWindow is how long after a session end logged at Info the next ones
// are only counted, for one line that sums them up.
const endLogWindow = time.Second

// endLog logs the ends of a broker's sessions without flooding the
// service's log. A session that hangs up holding nothing is routine: Debug.
// One that ends by a fault (a timeout, a protocol error) or releases leases
// is logged at Info, unless one was less than endLogWindow ago: then it is
// counted (and logged at Debug), and a single Info line, "lmx: sessions
// ended", sums up the window. 5,000 clients closing at once make two Info
// lines, not 5,000.
type endLog struct {
	mu       sync.Mutex
	timer    *time.Timer // guarded by mu; non-nil while a window is open
	sessions int         // ends counted in the window; guarded by mu
	leases   int         // leases those released; guarded by mu
	faults   int         // those that ended by a fault; guarded by mu
	fault    error       // the first of those faults; guarded by mu
}

// ended logs the end of a session (what says which protocol) with its
// attributes in slog, the error that ended it and the leases released;
// summaries go to base.
func (e *endLog) ended(base, log *slog.Logger, what string, err error, released int) {
	hangup := isHangup(err)
	if released == 0 && hangup {
		log.Debug("lmx: "+what+" ended", "err", err)
		return
	}
	e.mu.Lock()
	if e.timer == nil {
		e.timer = time.AfterFunc(endLogWindow, func() { e.summarize(base) })
		e.mu.Unlock()
		log.Info("lmx: "+what+" ended", "err", err, "leases_released", released)
		return
	}
	e.sessions++
	e.leases += released
	if !hangup {
		e.faults++
		if e.fault == nil {
			e.fault = err
		}
	}
	e.mu.Unlock()
	log.Debug("lmx: "+what+" ended", "err", err, "leases_released", released)
}

// summarize logs what the window counted, and keeps the window open for
// another endLogWindow if it counted any, else closes it.
func (e *endLog) summarize(log *slog.Logger) {
	e.mu.Lock()
	n, leases, faults, fault := e.sessions, e.leases, e.faults, e.fault
	e.sessions, e.leases, e.faults, e.fault = 0, 0, 0, nil
	if n == 0 {
		e.timer = nil
		e.mu.Unlock()
		return
	}
	e.timer.Reset(endLogWindow)
	e.mu.Unlock()
	attrs := []any{"sessions", n, "leases_released", leases, "faults", faults, "within", endLogWindow}
	if fault != nil {
		attrs = append(attrs, "first_fault", fault)
	}
	log.Info("lmx: sessions ended", attrs...)
}
