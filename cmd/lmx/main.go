// Command lmx is the lmx lock broker's command line.
//
// Usage:
//
//	lmx demo    show the broker at work: FIFO hand-off, a semaphore, a TTL
//	            expiring, a fence refusing a stale holder, and a client on a
//	            Unix socket sharing the table
package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "demo":
		err = demo(context.Background(), os.Stdout)
	case "help", "-h", "-help", "--help":
		usage(os.Stdout)
		return
	default:
		fmt.Fprintf(os.Stderr, "lmx: unknown command %q\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lmx:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: lmx COMMAND

Commands:
  demo    show the broker at work: FIFO hand-off, a semaphore, a TTL
          expiring, a fence refusing a stale holder, and a client on a
          Unix socket sharing the table
`)
}
