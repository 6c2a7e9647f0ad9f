import Foundation
import Glibc

/// The write end of the pipe the stop-signal handler writes one byte to. A global, set
/// before the handler is installed: a C signal handler can capture nothing.
nonisolated(unsafe) private var stopSignalWriteFD: Int32 = -1

/// Turns the stop signals into a call on a thread of its own, whichever thread the kernel
/// picks to deliver them to.
///
/// Not DispatchSource: on Linux it reads the signals through a signalfd with the signal set
/// to SIG_IGN, and only threads that block the signal keep it pending. A signal aimed at
/// the process is dropped when its main thread does not block it, which is the case once
/// the command's work starts on a pool thread (a `build` that awaited its config first):
/// SIGINT and SIGTERM were then ignored and a hook ran on for 1000 s. A real handler
/// (sigaction) runs on any thread; it only writes a byte, which is async-signal-safe.
final class StopSignals: @unchecked Sendable {
    private let readFD: Int32
    private let writeFD: Int32
    private let signals: [Int32]

    init(_ signals: [Int32], onSignal: @escaping @Sendable () -> Void) {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 { fds = [-1, -1] }
        // Close-on-exec: a hook or QEMU must not hold the pipe.
        for fd in fds where fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        (readFD, writeFD) = (fds[0], fds[1])
        self.signals = signals
        guard readFD >= 0 else { return }
        stopSignalWriteFD = writeFD
        for sig in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in
                var byte: UInt8 = 1
                _ = write(stopSignalWriteFD, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(sig, &action, nil)
        }
        let fd = readFD
        Thread {
            var byte: UInt8 = 0
            while true {
                let n = read(fd, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // the write end closed: the command is over
                onSignal()
            }
        }.start()
    }

    /// Ignores the signals again (the work is over; the exit follows), then closes the pipe,
    /// which ends the thread. Ignored first, so no handler writes to a closed descriptor.
    func stop() {
        for sig in signals { signal(sig, SIG_IGN) }
        guard readFD >= 0 else { return }
        close(writeFD)
    }
}
