import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Lock files and incremental extras with real dnf --installroot, from a local file:// repository
/// of tiny RPMs (rpmbuild, createrepo_c): no Fedora mirror needed, each build well under a minute.
@Suite(.serialized, .requires(.root, .dnf, .busybox), .tags(.root, .dnf, .busybox)) struct LockAndIncrementalFedoraTests {
    /// A noarch RPM NAME-VERSION-1 holding one file, copied into `repo`.
    func rpm(_ name: String, _ version: String, dir: String, repo: String) async throws {
        let spec = """
        Name: \(name)
        Version: \(version)
        Release: 1
        Summary: rootfs test package
        License: MIT
        BuildArch: noarch
        %description
        A file for the rootfs lock test.
        %install
        mkdir -p %{buildroot}/usr/share/\(name)
        echo '\(name) \(version)' > %{buildroot}/usr/share/\(name)/file.txt
        %files
        /usr/share/\(name)/file.txt

        """
        try Catalog.write(spec, to: dir + "/\(name).spec")
        try await Catalog.run("rpmbuild", ["-bb", "--define", "_topdir \(dir)/rpmbuild", dir + "/\(name).spec"])
        try FileManager.default.copyItem(atPath: dir + "/rpmbuild/RPMS/noarch/\(name)-\(version)-1.noarch.rpm",
                                         toPath: repo + "/\(name)-\(version)-1.noarch.rpm")
    }

    func rpmPackages(_ rootfs: String) async throws -> [String] {
        let q = try await Catalog.run("rpm", ["--root", rootfs, "--dbpath", "/usr/lib/sysimage/rpm", "-qa", "--qf", "%{NAME}-%{VERSION}\\n"])
        return q.standardOutput.split(separator: "\n").map(String.init).sorted()
    }

    @Test func lockRoundTripAVersionTheRepositoryLacksAndIncrementalExtras() async throws {
        let dir = try Fixtures.temporaryDirectory("fedora-lock")
        defer { FS.remove(dir) }
        let repo = dir + "/repo"
        try FS.makeDirectories(repo)
        try await rpm("rootfs-base", "1.0", dir: dir, repo: repo)
        try await rpm("rootfs-extra", "2.0", dir: dir, repo: repo)
        try await Catalog.run("createrepo_c", ["-q", repo])
        let env = ["REPO_URL": "file://\(repo)", "PACKAGES": "rootfs-base", "GPG_KEY_URL": "", "ROOTFS_CACHE_DIR": dir + "/cache"]
        func build(_ name: String, _ flags: [String]) async throws -> (status: Int32, stderr: String, stdout: String) {
            let r = try await Fixtures.rootfs(["build", "fedora", "--agent-init", "-r", dir + "/" + name, "--no-manifest", "--json"] + flags,
                                              environment: env, workingDirectory: dir)
            return (r.status, r.stderr, r.stdout)
        }
        func result(_ stdout: String) -> String? {
            let doc = try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any]
            return (doc?["treeCache"] as? [String: Any])?["result"] as? String
        }

        let first = try await build("first", ["--lock", dir + "/fedora.lock"])
        #expect(first.status == 0, "\(first.stderr.suffix(2000))")
        let lock = try PackageLock.read(dir + "/fedora.lock")
        #expect(lock.database == .rpm && lock.packages == [.init(name: "rootfs-base", version: "1.0-1")], "\(lock.packages)")

        // Incremental: the cached tree, and dnf --installroot given only rootfs-extra.
        let extended = try await build("extended", ["--extra-pkg", "rootfs-extra"])
        #expect(extended.status == 0, "\(extended.stderr.suffix(2000))")
        #expect(result(extended.stdout) == "incremental", "\(extended.stdout.suffix(800))")
        #expect(extended.stderr.contains("==> extend_rootfs: fedora") && !extended.stderr.contains("==> build_rootfs:"), "\(extended.stderr.suffix(1500))")
        #expect(try await rpmPackages(dir + "/extended") == ["rootfs-base-1.0", "rootfs-extra-2.0"])

        // --locked: exactly the lock's versions (name-version to dnf).
        let locked = try await build("locked", ["--locked", dir + "/fedora.lock"])
        #expect(locked.status == 0, "\(locked.stderr.suffix(2000))")
        #expect(try await rpmPackages(dir + "/locked") == ["rootfs-base-1.0"])

        // A version the repository lacks: the package and the version are named.
        let text = try String(contentsOfFile: dir + "/fedora.lock", encoding: .utf8)
            .replacingOccurrences(of: "package rootfs-base 1.0-1", with: "package rootfs-base 9.9-1")
        try text.write(toFile: dir + "/gone.lock", atomically: true, encoding: .utf8)
        let gone = try await build("gone", ["--locked", dir + "/gone.lock"])
        #expect(gone.status != 0)
        #expect(gone.stderr.contains("no version 9.9-1 of package rootfs-base"), "\(gone.stderr.suffix(2000))")
        #expect(!FS.exists(dir + "/gone"))
    }
}
