import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

private let epochEnv = ["SOURCE_DATE_EPOCH": "1700000000"]

/// An unprivileged user for rootless builds: created when missing, with
/// /etc/subuid and /etc/subgid ranges (mmdebstrap's unshare mode needs them).
enum RootlessUser {
    static let name = "rootfs-test"

    static func ensure() async throws {
        let runner = ProcessRunner()
        if (try? await runner.capture(ToolCommand("id", ["-u", name]))) == nil {
            try await runner.capture(ToolCommand("useradd", ["--create-home", "--shell", "/bin/bash", name]))
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            if !text.split(separator: "\n").contains(where: { $0.hasPrefix(name + ":") }) {
                let flag = file == "/etc/subuid" ? "--add-subuids" : "--add-subgids"
                try await runner.capture(ToolCommand("usermod", [flag, "300000-365535", name]))
            }
        }
    }

    /// A world-readable copy of the built rootfs, its agent and the distros, and a
    /// directory the user owns to run in.
    static func stage(in dir: String) async throws -> (binary: String, distros: String, run: String) {
        try FS.makeDirectories(dir + "/bin")
        try FS.copyFile(Fixtures.rootfsBinary, to: dir + "/bin/rootfs", mode: 0o755)
        try FS.copyFile(Fixtures.agentBinary, to: dir + "/bin/rootfs-agent", mode: 0o755)
        try await ProcessRunner().capture(ToolCommand("cp", ["-r", Fixtures.repositoryRoot + "/distros", dir + "/distros"]))
        try await ProcessRunner().capture(ToolCommand("chmod", ["-R", "a+rX", dir]))
        try FS.makeDirectories(dir + "/run")
        try await ProcessRunner().capture(ToolCommand("chown", [name, dir + "/run"]))
        return (dir + "/bin/rootfs", dir + "/distros", dir + "/run")
    }

    /// Runs a command as the user (setpriv: no sudo, no capabilities).
    static func run(_ arguments: [String], in directory: String, environment: [String: String] = [:]) async throws -> Fixtures.CLIResult {
        // A cache of the run's own (as Fixtures.rootfs gives each call): rootless builds use the tree
        // cache too, and one test's entry must neither serve another test nor stay in the user's home.
        var env = ["HOME": "/home/" + name, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                   "ROOTFS_CACHE_DIR": directory + "/.rootfs-cache"]
        env.merge(environment) { $1 }
        let command = ["--reuid", name, "--regid", name, "--init-groups", "env"] + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } + arguments
        do {
            let out = try await ProcessRunner().capture(ToolCommand("setpriv", command, workingDirectory: directory))
            return Fixtures.CLIResult(status: 0, stdout: out.standardOutput, stderr: out.standardError)
        } catch let failure as ToolFailure {
            return Fixtures.CLIResult(status: 1, stdout: "", stderr: failure.outputTail.joined(separator: "\n"))
        }
    }
}

/// Rootless and reproducible Debian builds: real mmdebstrap from Debian's
/// mirror (root to create the user and for the reference build; network).
@Suite(.serialized, .requires(.root, .network), .tags(.root, .network)) struct RootlessAndReproducibleDebianTestsRequiringRootAndNetwork {
    private func sha(_ path: String) throws -> String { try SHA256.hexDigest(ofFile: path) }

    /// owner and mode of every entry, by path.
    private func owners(_ archive: String) throws -> [String: String] {
        Dictionary(try ArchiveReader.list(archive).map { ($0.path, "\($0.uid):\($0.gid) \(String($0.mode, radix: 8))") },
                   uniquingKeysWith: { a, _ in a })
    }

    @Test func rootlessBuildGivesTheRootBuildsOwnersAndBytes() async throws {
        try await RootlessUser.ensure()
        let dir = try Fixtures.temporaryDirectory("rootless")
        defer { FS.remove(dir) }
        let staged = try await RootlessUser.stage(in: dir)
        let args = ["build", "debian", "--distros-dir", staged.distros, "--agent-init", "--compression", "gzip",
                    "--format", "tar", "--format", "initrd", "--format", "raw"]
        let user = try await RootlessUser.run([staged.binary] + args + ["-O", staged.run + "/out"], in: staged.run, environment: epochEnv)
        #expect(user.status == 0, "\(user.stderr.suffix(3000))")
        let root = try await Fixtures.rootfs(args + ["-O", dir + "/root"],
                                             environment: epochEnv, workingDirectory: dir)
        #expect(root.status == 0, "\(root.stderr.suffix(3000))")
        let u = staged.run + "/out/debian", r = dir + "/root/debian"

        // Ownership and setuid bits as the root build has them (libarchive listings).
        for ext in [".tar", ".initrd"] {
            let userOwners = try owners(u + ext), rootOwners = try owners(r + ext)
            #expect(userOwners["etc/shadow"]?.hasPrefix("0:42 ") == true, "\(ext): \(userOwners["etc/shadow"] ?? "-")")
            #expect(userOwners["usr/bin/passwd"] == rootOwners["usr/bin/passwd"] && rootOwners["usr/bin/passwd"]?.hasSuffix("104755") == true)
            let differing = rootOwners.filter { userOwners[$0.key] != $0.value }.map(\.key).sorted()
            #expect(differing.isEmpty, "\(ext): \(differing.prefix(20))")
        }
        // debugfs on the rootless ext4 image.
        let part = u + ".img?offset=1048576"
        let shadow = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "stat /etc/shadow", part])).standardOutput
        #expect(shadow.contains("User:     0   Group:    42"), "\(shadow)")
        let passwd = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "stat /usr/bin/passwd", part])).standardOutput
        #expect(passwd.contains("Mode:  04755") && passwd.contains("User:     0   Group:     0"))
        let null = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "stat /dev/null", part])).standardOutput
        #expect(null.contains("character special") && null.contains("01:03"))
        try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", part]))

        // And the same bytes (what differs is spelled out by rootfs diff).
        for ext in [".tar", ".initrd", ".img"] {
            let same = try sha(u + ext) == sha(r + ext)
            var why = ""
            if !same && ext != ".img" { why = (try await Fixtures.rootfs(["diff", r + ext, u + ext])).stdout }
            #expect(same, "\(ext) differs between the root and the rootless build: \(why.prefix(3000))")
        }

        // A rootfs directory needs root: refused with the way around.
        let refused = try await RootlessUser.run([staged.binary, "build", "debian", "--distros-dir", staged.distros, "-r", staged.run + "/dir"],
                                                 in: staged.run)
        #expect(refused.status != 0 && refused.stderr.contains("needs root") && refused.stderr.contains("--format tar"), "\(refused.stderr)")
        #expect(!FS.exists(staged.run + "/dir"))
        // So does squashfs from a tar (its tool reads only directories).
        let squash = try await RootlessUser.run([staged.binary, "image", u + ".tar", "-o", staged.run + "/x.squashfs"], in: staged.run)
        #expect(squash.status != 0 && squash.stderr.contains("needs root") && squash.stderr.contains("raw"), "\(squash.stderr)")
    }

    @Test func twoBuildsWithSourceDateEpochAreByteIdentical() async throws {
        let dir = try Fixtures.temporaryDirectory("repro-debian")
        defer { FS.remove(dir) }
        var digests: [[String]] = []
        for run in ["one", "two"] {
            let r = try await Fixtures.rootfs(["build", "debian", "--format", "tar", "--format", "initrd", "--format", "raw",
                                               "-O", dir + "/" + run], environment: epochEnv, workingDirectory: dir)
            #expect(r.status == 0, "\(r.stderr.suffix(3000))")
            digests.append(try [".tar", ".initrd", ".img"].map { try sha(dir + "/\(run)/debian" + $0) })
        }
        #expect(digests[0] == digests[1])
        if digests[0][0] != digests[1][0] {
            let why = try await Fixtures.rootfs(["diff", dir + "/one/debian.tar", dir + "/two/debian.tar"])
            Issue.record("tar differs: \(why.stdout.prefix(3000))")
        }
        // No host name, resolv.conf copy or dpkg log in the tree.
        let paths = Set(try ArchiveReader.list(dir + "/one/debian.tar").map(\.path))
        for leak in ["etc/hostname", "etc/resolv.conf", "var/log/dpkg.log", "var/cache/ldconfig/aux-cache"] {
            #expect(!paths.contains(leak), "\(leak) is in the tree")
        }
    }
}
