import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Starts the real CLI without waiting; output goes to files.
private final class RunningCLI: @unchecked Sendable {
    let process = Process()
    let stdoutPath: String
    let stderrPath: String

    init(_ arguments: [String], environment: [String: String] = [:], in directory: String, label: String) throws {
        stdoutPath = directory + "/\(label).out"
        stderrPath = directory + "/\(label).err"
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Fixtures.rootfsBinary)
        process.arguments = arguments
        // A cache of its own (in the run's directory), as Fixtures.rootfs gives: with the
        // shared default cache an earlier test's tree of the same distro was a hit, the
        // hook never ran and the test waited for its grandchild in vain.
        let cache = ["ROOTFS_CACHE_DIR": directory + "/\(label).cache"]
        process.environment = ProcessInfo.processInfo.environment.merging(cache.merging(environment) { $1 }) { $1 }
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }

    func finish() async -> Int32 {
        while process.isRunning { try? await Task.sleep(for: .milliseconds(50)) }
        return process.terminationStatus
    }
}

/// Waits until `condition` holds (polling), or fails after `seconds`.
private func waitFor(_ what: String, seconds: Double = 300, _ condition: () -> Bool) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { throw RootfsError("timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// Whether a process is alive (a zombie counts as gone).
private func isAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    guard let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
}

private func listing(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
}

/// Faults during a build and hostile input (docs/FAULTS.md lists each case).
/// A class, for its deinit: each test's work directory (600 MB of random data in the
/// writer's case) and its distros are removed after it, pass or fail.
@Suite(.requires(.root, .network, .busybox), .tags(.root, .network, .busybox)) final class FaultTests: Sendable {
    let distros: String
    let work: String

    deinit {
        FS.remove(work)
        FS.remove(distros)
    }

    init() throws {
        let hanging = TestDistros.busyboxLib.replacingOccurrences(of: "    for p in ${EXTRA_PKGS:-}", with: """
                if [ -n "${HANG:-}" ]; then
                    # A grandchild in the background, then wait: like mmdebstrap's apt and dpkg.
                    sleep 1000 &
                    printf '%s\\n' "$!" > "$HANG/grandchild.pid"
                    printf '%s\\n' "$$" > "$HANG/hook.pid"
                    wait
                fi
                if [ -n "${SLOW:-}" ]; then sleep "$SLOW"; fi
                # GATE: wait (at most 120 s) until the test creates this file.
                if [ -n "${GATE:-}" ]; then for _ in $(seq 1 1200); do [ -e "$GATE" ] && break; sleep 0.1; done; fi
                for p in ${EXTRA_PKGS:-}
            """)
        distros = try TestDistros.make([
            "bb": (TestDistros.busyboxConfig, hanging),
            "escape": (TestDistros.busyboxConfig, TestDistros.busyboxLib.replacingOccurrences(
                of: "    for p in ${EXTRA_PKGS:-}", with: "    touch \"$root/../escape\"\n    for p in ${EXTRA_PKGS:-}")),
        ])
        work = try Fixtures.temporaryDirectory("faults")
    }

    func build(_ args: [String]) -> [String] { ["build", "--distros-dir", distros, "bb", "--agent-init"] + args }

    @Test(arguments: [SIGTERM, SIGINT, SIGHUP])
    func signalDuringTheHookStopsItsChildrenAndLeavesNoOutput(signal: Int32) async throws {
        let dir = work + "/sig\(signal)"
        try FS.makeDirectories(dir + "/out")
        try "earlier".write(toFile: dir + "/out/bb.initrd", atomically: false, encoding: .utf8)
        let cli = try RunningCLI(build(["--initrd", dir + "/out/bb.initrd"]), environment: ["HANG": dir], in: dir, label: "run")
        try await waitFor("the hook's grandchild") { FS.exists(dir + "/grandchild.pid") && FS.exists(dir + "/hook.pid") }
        let grandchild = Int32(try String(contentsOfFile: dir + "/grandchild.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        let hook = Int32(try String(contentsOfFile: dir + "/hook.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        #expect(isAlive(grandchild) && isAlive(hook))
        kill(cli.process.processIdentifier, signal)
        let status = await cli.finish()
        #expect(status == 130, "\(cli.stderr)")
        #expect(cli.stderr.contains("interrupted"))
        try await waitFor("the hook and its grandchild to die", seconds: 10) { !isAlive(grandchild) && !isAlive(hook) }
        // The earlier output is untouched, no temporary is left anywhere.
        #expect(try String(contentsOfFile: dir + "/out/bb.initrd", encoding: .utf8) == "earlier")
        #expect(!listing(dir + "/out").contains { $0.contains(".tmp-") })
        #expect(!listing(dir + "/build/bb").contains { $0.contains(".tmp-") }, "\(listing(dir + "/build/bb"))")
        // A second run succeeds.
        let again = try await Fixtures.rootfs(build(["--initrd", dir + "/out/bb.initrd"]), workingDirectory: dir)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try ArchiveReader.list(dir + "/out/bb.initrd").contains { $0.path == "bin/busybox" })
    }

    @Test func signalDuringTheWriterLeavesNoPartialOutput() async throws {
        // A tree whose gzip initrd takes seconds: random data does not compress.
        let dir = work + "/writer"
        let tree = dir + "/tree"
        try FS.makeDirectories(dir)
        let built = try await Fixtures.rootfs(build(["-r", tree]), workingDirectory: work)
        #expect(built.status == 0, "\(built.stderr)")
        try await ProcessRunner().capture(ToolCommand("dd", ["if=/dev/urandom", "of=\(tree)/big", "bs=1M", "count=600", "status=none"]))
        try "earlier".write(toFile: dir + "/out.initrd", atomically: false, encoding: .utf8)
        let cli = try RunningCLI(["initrd", tree, "-o", dir + "/out.initrd", "--compression", "gzip"], in: dir, label: "initrd")
        // Watched and signalled from a thread of its own: in the full suite the test pool's
        // threads can be blocked long enough for the whole write to finish unseen (CI saw it).
        let pid = cli.process.processIdentifier
        let seen = await withCheckedContinuation { (done: CheckedContinuation<Bool, Never>) in
            Thread {
                let deadline = Date().addingTimeInterval(300)
                while Date() < deadline && kill(pid, 0) == 0 {
                    if listing(dir).contains(where: { $0.hasPrefix(".out.initrd.tmp-") }) {
                        kill(pid, SIGINT)
                        return done.resume(returning: true)
                    }
                    usleep(5_000)
                }
                done.resume(returning: false)
            }.start()
        }
        #expect(seen, "the writer's temporary file never appeared: \(cli.stderr)")
        let status = await cli.finish()
        #expect(status == 130, "\(cli.stderr)")
        #expect(try String(contentsOfFile: dir + "/out.initrd", encoding: .utf8) == "earlier")
        #expect(!listing(dir).contains { $0.contains(".tmp-") }, "\(listing(dir))")
    }

    @Test func concurrentBuildsIntoDifferentDirectoriesBothSucceed() async throws {
        let dir = work + "/concurrent"
        try FS.makeDirectories(dir)
        // Alongside: both must run at once (under the suite's cap of runs one could wait for the other).
        async let a = Fixtures.rootfs(build(["--initrd", dir + "/a.initrd"]), environment: ["SLOW": "1"], workingDirectory: dir, alongside: true)
        async let b = Fixtures.rootfs(build(["--initrd", dir + "/b.initrd"]), environment: ["SLOW": "1"], workingDirectory: dir, alongside: true)
        let (ra, rb) = try await (a, b)
        #expect(ra.status == 0 && rb.status == 0, "\(ra.stderr) \(rb.stderr)")
        #expect(FS.isRegularFile(dir + "/a.initrd") && FS.isRegularFile(dir + "/b.initrd"))
        // Both shared build/bb: one log each.
        let logs = listing(dir + "/build/bb").filter { $0.hasSuffix(".log") }
        #expect(logs.count == 2 && logs.contains("build.log"), "\(logs)")
    }

    @Test func concurrentBuildsOfTheSameOutputOneWinsOneGetsALockError() async throws {
        let dir = work + "/same"
        try FS.makeDirectories(dir)
        // The first build holds its hook until the second one has run.
        let gate = dir + "/gate"
        let first = try RunningCLI(build(["--initrd", dir + "/x.initrd"]), environment: ["GATE": gate], in: dir, label: "first")
        try await waitFor("the first build's lock") { FS.exists(dir + "/.x.initrd.lock") }
        // Alongside: the first build's gate gives up after 120 s, a wait for a permit could be longer.
        let second = try await Fixtures.rootfs(build(["--initrd", dir + "/x.initrd"]), workingDirectory: dir, alongside: true)
        FileManager.default.createFile(atPath: gate, contents: nil)
        #expect(second.status == 1)
        #expect(second.stderr.contains("another rootfs process (pid \(first.process.processIdentifier)) is writing the output \(dir)/x.initrd"), "\(second.stderr)")
        #expect(await first.finish() == 0, "\(first.stderr)")
        #expect(try ArchiveReader.list(dir + "/x.initrd").contains { $0.path == "bin/busybox" })
    }

    @Test func hookWritingOutsideItsRootfsIsRejected() async throws {
        let dir = work + "/escape"
        try FS.makeDirectories(dir)
        let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "escape", "--agent-init", "--initrd", dir + "/e.initrd"],
                                          workingDirectory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("build_rootfs() of distro 'escape' wrote outside its rootfs directory") && r.stderr.contains("/escape"), "\(r.stderr)")
        #expect(!FS.exists(dir + "/e.initrd"))
        #expect(!listing(dir + "/build/escape").contains { $0.contains(".tmp-") || $0 == "escape" })
    }

    @Test func extraPackagesWithShellSyntaxOrOptionsAreNeverExecuted() async throws {
        let marker = work + "/pwned"
        for bad in ["foo; touch \(marker)", "-oAPT::Get::Assume-Yes=1", "--help", "$(touch \(marker))", "a|b", "`touch \(marker)`"] {
            let r = try await Fixtures.rootfs(build(["--initrd", work + "/p.initrd", "--extra-pkg=\(bad)"]), workingDirectory: work)
            #expect(r.status == 1 && r.stderr.contains("invalid package name"), "\(bad): \(r.stderr)")
            let env = try await Fixtures.rootfs(build(["--initrd", work + "/p.initrd"]), environment: ["EXTRA_PKG": bad], workingDirectory: work)
            #expect(env.status == 1 && env.stderr.contains("invalid package name"), "\(bad): \(env.stderr)")
        }
        #expect(!FS.exists(marker) && !FS.exists(work + "/p.initrd"))
        #expect(!PackageName.isValid("-x") && !PackageName.isValid("a b") && !PackageName.isValid("a;b") && !PackageName.isValid(""))
        #expect(PackageName.isValid("libc6:amd64") && PackageName.isValid("g++") && PackageName.isValid("systemd=252.1-1"))
    }
}
