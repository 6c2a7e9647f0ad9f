import Foundation

extension RootfsConfig {
    /// The flag that writes the `--format` outputs into a directory ([output] directory).
    /// (`-O/--output-dir`; `-o` names a single output file.)
    public static let outputDirectoryFlag = "-O"

    /// The config as `rootfs build` arguments, each with the key it comes from (for messages).
    /// The CLI puts them before the command line's own, so a flag given there wins: a later
    /// single-valued option replaces an earlier one, lists add up (the file's entries first).
    /// There is one road from the file to a build: the flags' own parsing and checks.
    public func buildArguments() -> [(key: String, arguments: [String])] {
        var out: [(String, [String])] = []
        func add(_ key: String, _ flag: String, _ value: String?) {
            if let value { out.append((key, [flag, value])) }
        }
        func add(_ key: String, _ flag: String, _ value: Int?) {
            if let value { out.append((key, [flag, String(value)])) }
        }
        func add(_ key: String, _ flag: String, _ values: [String]?) {
            for v in values ?? [] { out.append((key, [flag, v])) }
        }
        func flag(_ key: String, _ flag: String, _ on: Bool?) {
            if on == true { out.append((key, [flag])) }
        }
        if let d = distro {
            add("distro.version", "--os-version", d.version)
            add("distro.architecture", "--arch", d.architecture)
            add("distro.packages", "--extra-pkg", d.packages)
            add("distro.from-image", "--from-image", d.fromImage)
            add("distro.distros-dirs", "--distros-dir", d.distrosDirs)
        }
        if let c = content {
            add("content.agent", "--agent", c.agent)
            flag("content.agent-init", "--agent-init", c.agentInit)
            flag("content.kata", "--kata", c.kata)
            flag("content.rootfs-only", "--rootfs-only", c.rootfsOnly)
            add("content.overlays", "--overlay", c.overlays)
            add("content.files", "--file", c.files)
        }
        if let o = output {
            add("output.directory", Self.outputDirectoryFlag, o.directory)
            add("output.formats", "--format", o.formats)
            add("output.rootfs-dir", "--rootfs-dir", o.rootfsDir)
            add("output.initrd", "--initrd", o.initrd)
            add("output.image", "--image", o.image)
            add("output.compression", "--compression", o.compression)
            flag("output.force", "--force", o.force)
            if o.manifest == false { out.append(("output.manifest", ["--no-manifest"])) }
            flag("output.sbom", "--sbom", o.sbom)
        }
        if let i = image {
            add("image.free-space", "--free-space", i.freeSpace)
            add("image.partition-table", "--partition-table", i.partitionTable)
            flag("image.no-partition-table", "--no-partition-table", i.noPartitionTable)
            add("image.fs", "--fs", i.fs)
            add("image.erofs-compression", "--erofs-compression", i.erofsCompression)
            add("image.block-size", "--block-size", i.blockSize)
            add("image.ext4-writer", "--ext4-writer", i.ext4Writer)
            flag("image.dax", "--dax", i.dax)
            flag("image.skip-dax-header", "--skip-dax-header", i.skipDaxHeader)
            add("image.align", "--align", i.align)
            flag("image.vhdx-fixed", "--vhdx-fixed", i.vhdxFixed)
            flag("image.verity", "--verity", i.verity)
            add("image.variant", "--variant", i.variant)
            add("image.kernel", "--kernel", i.kernel)
            add("image.cmdline", "--cmdline", i.cmdline)
        }
        if let b = build {
            add("build.engine", "--engine", b.engine)
            add("build.builder-base", "--builder-base", b.builderBase)
            add("build.cache-dir", "--cache-dir", b.cacheDir)
            flag("build.no-cache", "--no-cache", b.noCache)
        }
        return out
    }

    /// Fills the keys `self` leaves unset from `base` (the command line's config over the file's).
    public func merged(over base: RootfsConfig) -> RootfsConfig {
        var c = self
        c.boot = boot ?? base.boot
        if let b = base.boot, var mine = c.boot {
            mine.kernel = mine.kernel ?? b.kernel
            mine.memory = mine.memory ?? b.memory
            mine.cpus = mine.cpus ?? b.cpus
            mine.timeout = mine.timeout ?? b.timeout
            mine.append = mine.append ?? b.append
            mine.firmware = mine.firmware ?? b.firmware
            c.boot = mine
        }
        return c
    }
}

extension RootfsConfig {
    /// The config with what only the plan knows filled in: the distro found, the version
    /// config.sh settled on, the architecture, every extra package (EXTRA_PKGS included),
    /// whether the agent is the init, and SOURCE_DATE_EPOCH. A replay then depends on no
    /// environment variable for these.
    public func resolved(with plan: BuildPlan) -> RootfsConfig {
        var c = self
        var d = c.distro ?? Distro()
        d.name = plan.distro.name
        d.version = plan.config.osVersion ?? d.version
        d.architecture = plan.architecture
        d.packages = plan.extraPackages
        if plan.distro.searchDirectory.origin == .environment {
            // Found through ROOTFS_DISTROS_PATH: named, so the replay finds it without the variable.
            d.distrosDirs = (d.distrosDirs ?? []) + [plan.distro.searchDirectory.path]
        }
        c.distro = d
        var content = c.content ?? Content()
        content.agentInit = plan.agent.isInit
        c.content = content
        var build = c.build ?? Build()
        build.sourceDateEpoch = plan.epoch
        c.build = build
        return c
    }
}
