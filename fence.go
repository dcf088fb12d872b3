package lmx

import (
	"fmt"
	"sync"
)

// A Fence guards a resource against stale lock holders. A holder whose lease
// was lost (expired, preempted, its session gone) may not know it yet and
// still write; passing the lease's Token with each write lets the resource
// refuse it once a newer holder has written.
//
// The zero Fence is ready for use and safe for concurrent use. It remembers
// the highest token seen per key, one small map entry per key, until Forget.
type Fence struct {
	mu      sync.Mutex
	highest map[string]uint64 // guarded by mu
}

// Check accepts token for key if no higher token has been seen for key, and
// remembers it; the same token may be presented any number of times. A lower
// token fails with ErrStaleToken.
func (f *Fence) Check(key string, token uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h := f.highest[key]; token < h {
		return fmt.Errorf("%w: key %q token %d, seen %d", ErrStaleToken, key, token, h)
	}
	if f.highest == nil {
		f.highest = make(map[string]uint64)
	}
	f.highest[key] = token
	return nil
}

// Forget drops what the fence remembers of key.
func (f *Fence) Forget(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.highest, key)
}
