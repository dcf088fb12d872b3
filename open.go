package lmx

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"sync"
)

// A Driver opens a Locker for a URL of its scheme. Backends register one
// with Register, the way database/sql drivers do, from their package's init.
type Driver func(ctx context.Context, u *url.URL) (Locker, error)

var (
	driversMu sync.RWMutex
	drivers   = map[string]Driver{
		"mem":  openMem,
		"unix": openClient,
		"tcp":  openClient,
	}
)

// Register makes a Driver available to Open under scheme. It panics if
// scheme is registered already or d is nil.
func Register(scheme string, d Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if d == nil {
		panic("lmx: Register driver is nil")
	}
	if _, dup := drivers[scheme]; dup {
		panic("lmx: Register called twice for scheme " + scheme)
	}
	drivers[scheme] = d
}

// Open returns a Locker for rawURL, so that where the locks live is a
// matter of configuration:
//
//	mem://                     a new, private in-process Broker
//	unix:///run/app/lmx.sock   a Client of the broker on that Unix socket
//	tcp://10.0.0.5:6971        a Client of the broker at that address
//
// and whatever schemes backends have registered (etcd://, ...). ctx bounds
// the opening only.
func Open(ctx context.Context, rawURL string) (Locker, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("lmx: open: %w", err)
	}
	driversMu.RLock()
	d := drivers[u.Scheme]
	driversMu.RUnlock()
	if d == nil {
		return nil, fmt.Errorf("lmx: open %q: no driver for scheme %q (have %v)", rawURL, u.Scheme, Schemes())
	}
	return d(ctx, u)
}

// Schemes returns the schemes Open knows, sorted.
func Schemes() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	s := make([]string, 0, len(drivers))
	for k := range drivers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func openMem(context.Context, *url.URL) (Locker, error) { return NewBroker(), nil }

func openClient(ctx context.Context, u *url.URL) (Locker, error) {
	return Dial(ctx, u.String())
}
