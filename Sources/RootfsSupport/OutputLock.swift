import Foundation

/// An exclusive lock on an output path: `flock` on `.NAME.lock` next to it.
/// Two builds writing the same output: the second fails at once with a clear
/// error instead of racing the first. The lock file is removed when the lock
/// is released (or stays, unlocked, if the process was killed).
public final class OutputLock: @unchecked Sendable {
    public let path: String
    public let lockPath: String
    private var fd: Int32

    /// Where the lock of `output` lives.
    public static func lockPath(for output: String) -> String {
        FS.parent(output) + "/." + FS.basename(output) + ".lock"
    }

    /// Takes the lock or throws naming the output and the holder.
    public init(output: String, what: String = "output") throws {
        path = output
        lockPath = Self.lockPath(for: output)
        try FS.makeDirectories(FS.parent(output))
        while true {
            fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
            guard fd >= 0 else {
                throw RootfsError("cannot create the lock file \(lockPath) for \(output): \(FS.errnoText())")
            }
            // The pid is written into the file: never through a hard link to another file
            // (a planted `.NAME.lock` linked to /etc/passwd would be truncated), nor into a FIFO or device.
            var opened = stat()
            if fstat(fd, &opened) != 0 || (opened.st_mode & S_IFMT) != S_IFREG || opened.st_nlink > 1 {
                close(fd)
                fd = -1
                throw RootfsError("the lock file \(lockPath) for \(output) is not a plain file of its own (a hard link or a special file)",
                                  hint: "remove it; rootfs creates it itself")
            }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                var holder = [UInt8](repeating: 0, count: 32)
                let n = pread(fd, &holder, 31, 0)
                close(fd)
                fd = -1
                let pid = n > 0 ? String(decoding: holder[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
                if code == EWOULDBLOCK {
                    throw RootfsError("another rootfs process (pid \(pid)) is writing the \(what) \(output)",
                                      hint: "wait for it to finish, or write to another path (the lock is \(lockPath))")
                }
                throw RootfsError("cannot lock \(lockPath): \(FS.errnoText(code))")
            }
            // The holder before us may have removed the file between our open and our lock:
            // the lock counts only on the file that is still at the path.
            var held = stat(), current = stat()
            if fstat(fd, &held) == 0 && lstat(lockPath, &current) == 0 && held.st_ino == current.st_ino && held.st_dev == current.st_dev {
                break
            }
            close(fd)
        }
        ftruncate(fd, 0)
        let text = Array("\(getpid())\n".utf8)
        _ = pwrite(fd, text, text.count, 0)
    }

    /// Tries to lock; nil when another process holds it.
    public static func attempt(output: String) -> OutputLock? { try? OutputLock(output: output) }

    /// The lock file goes away with the lock (still locked while it is removed).
    deinit {
        if fd >= 0 {
            unlink(lockPath)
            close(fd)
        }
    }
}
