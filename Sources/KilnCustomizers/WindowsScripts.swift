import Foundation
import KilnSupport
import KilnTemplate

/// The PowerShell Kiln generates for Windows guests: every value enters as a single-quoted literal
/// (`PowerShell.quote`), and scripts travel as -EncodedCommand, so no quote, `$` or non-ASCII character in a
/// template can change a script's structure.
public enum WindowsScripts {
    /// Where scripts and elevated-task logs go in the guest (Packer's choice too).
    public static let tempDirectory = #"C:\Windows\Temp"#

    /// An inline PowerShell customizer's lines as a script file, as Packer wraps them: progress bars off, the
    /// lines in order, the exit code of the last native command as the script's.
    public static func inlineScript(_ lines: [String]) -> String {
        "$ProgressPreference = 'SilentlyContinue'\n" + lines.joined(separator: "\n") + "\nexit $LASTEXITCODE\n"
    }

    /// The cmd.exe line that runs a script file: execution policy bypassed, progress off, Packer's environment
    /// variables set as its powershell provisioner sets them (PACKER_BUILDER_TYPE and PACKER_BUILD_NAME, both
    /// azure-arm on AIB's build VM), its exit code passed on (a script that throws exits 1).
    public static func runScriptCommand(path: String) -> String {
        PowerShell.commandLine("""
        $ProgressPreference = 'SilentlyContinue'
        $env:PACKER_BUILDER_TYPE = 'azure-arm'; $env:PACKER_BUILD_NAME = 'azure-arm'
        & \(PowerShell.quote(path))
        if ($null -ne $LASTEXITCODE) { exit $LASTEXITCODE } elseif ($?) { exit 0 } else { exit 1 }
        """)
    }

    public enum Principal: Sendable, Equatable {
        /// The build's administrator, with its password (logon type TASK_LOGON_PASSWORD).
        case user(name: String, password: String)
        /// NT AUTHORITY\SYSTEM (TASK_LOGON_SERVICE_ACCOUNT), AIB's runAsSystem.
        case system
    }

    /// Runs `command` (a cmd.exe line) through a scheduled task at the highest run level, as Packer's elevated
    /// provisioners do: a WinRM logon is filtered (no admin token), a task is not. The task's output goes to a log
    /// file that this script tails to its own stdout; its exit code is the task's LastTaskResult. The task and
    /// the log are removed afterwards.
    public static func elevated(command: String, principal: Principal, id: String = UUID().uuidString.lowercased()) -> String {
        let register: String
        switch principal {
        case .user(let name, let password):
            register = "$folder.RegisterTaskDefinition($name, $task, 6, \(PowerShell.quote(name)), \(PowerShell.quote(password)), 1)"
        case .system:
            register = "$folder.RegisterTaskDefinition($name, $task, 6, 'SYSTEM', $null, 5)"
        }
        return """
        $ErrorActionPreference = 'Stop'
        $name = \(PowerShell.quote("kiln-elevated-" + id))
        $log = Join-Path $env:SystemRoot \(PowerShell.quote("Temp\\kiln-elevated-\(id).out"))
        $command = \(PowerShell.quote(command))
        $service = New-Object -ComObject Schedule.Service
        $service.Connect()
        $folder = $service.GetFolder('\\')
        $task = $service.NewTask(0)
        $task.RegistrationInfo.Description = 'Kiln elevated command'
        $task.Settings.AllowDemandStart = $true
        $task.Settings.Enabled = $true
        $task.Settings.ExecutionTimeLimit = 'PT0S'
        $task.Settings.DisallowStartIfOnBatteries = $false
        $task.Settings.StopIfGoingOnBatteries = $false
        $task.Settings.MultipleInstances = 2
        $task.Principal.RunLevel = 1
        $action = $task.Actions.Create(0)
        $action.Path = 'cmd.exe'
        $action.Arguments = '/c chcp 65001 >nul & ' + $command + ' > "' + $log + '" 2>&1'
        $registered = \(register)
        $null = $registered.Run($null)
        $offset = 0
        $stdout = [Console]::OpenStandardOutput()
        function Copy-NewOutput {
          if (-not (Test-Path -LiteralPath $log)) { return }
          $stream = [IO.File]::Open($log, 'Open', 'Read', 'ReadWrite')
          try {
            if ($stream.Length -gt $script:offset) {
              $null = $stream.Seek($script:offset, 'Begin')
              $buffer = New-Object byte[] ($stream.Length - $script:offset)
              $read = $stream.Read($buffer, 0, $buffer.Length)
              $stdout.Write($buffer, 0, $read)
              $stdout.Flush()
              $script:offset += $read
            }
          } finally { $stream.Close() }
        }
        # 267009: the task is running; 267011: it has not run yet.
        do {
          Start-Sleep -Milliseconds 250
          Copy-NewOutput
          $current = $folder.GetTask($name)
        } while ($current.State -eq 2 -or $current.State -eq 4 -or $current.LastTaskResult -eq 267009 -or $current.LastTaskResult -eq 267011)
        Start-Sleep -Milliseconds 250
        Copy-NewOutput
        $result = $current.LastTaskResult
        $folder.DeleteTask($name, 0)
        Remove-Item -LiteralPath $log -Force -ErrorAction SilentlyContinue
        exit $result
        """
    }

    /// Prints the time the guest last booted, as a boot identity: a restart changes it.
    public static let bootIdentity = PowerShell.commandLine("""
    $os = if (Get-Command Get-CimInstance -ErrorAction SilentlyContinue) { Get-CimInstance Win32_OperatingSystem } else { Get-WmiObject Win32_OperatingSystem }
    [Console]::Out.WriteLine('boot:' + $os.LastBootUpTime.ToString())
    """)

    /// Packer's default restart check: prints "<host> restarted.".
    public static let restartedProbe = PowerShell.commandLine("""
    [Console]::Out.WriteLine(('{0} restarted.' -f [System.Net.Dns]::GetHostName()))
    """)

    public static let rebootCommand = #"shutdown /r /f /t 0 /c "kiln windows update""#
    public static let powerOffCommand = PowerShell.commandLine(powerOffScript)

    /// The last command of a Windows build, after deprovisioning: the power-off is scheduled first (so nothing
    /// below can stop it), then what Kiln added for the build leaves the image — the WinRM setup script, the
    /// firewall rule, the HTTPS listener and its self-signed certificate. This command runs over that listener, so
    /// its removal comes last (and the reply may not arrive: the build waits for the power-off, not for it).
    /// `Enable-PSRemoting`'s own HTTP listener and rules are Windows' defaults on Server and stay.
    static let powerOffScript = """
    $ErrorActionPreference = 'Continue'
    & shutdown.exe /s /f /t 5 /c "kiln shutdown"
    Remove-Item -LiteralPath '\(winRMSetupScriptPath)' -Force -ErrorAction SilentlyContinue
    & netsh advfirewall firewall delete rule name='Kiln WinRM HTTPS' | Out-Null
    $listeners = @(Get-ChildItem 'WSMan:\\localhost\\Listener' | Where-Object { $_.Keys -contains 'Transport=HTTPS' })
    foreach ($listener in $listeners) {
      $thumbprint = (Get-ChildItem -Path $listener.PSPath | Where-Object { $_.Name -eq 'CertificateThumbprint' }).Value
      if ($thumbprint) { Get-ChildItem 'Cert:\\LocalMachine\\My' | Where-Object { $_.Thumbprint -eq $thumbprint } | Remove-Item -Force }
    }
    $listeners | Remove-Item -Recurse -Force
    """

    /// Windows Update through the Windows Update Agent API, run as SYSTEM. Filters are `include:EXPR` or
    /// `exclude:EXPR`, evaluated with `$_` bound to each update; the first match decides, none matching skips
    /// it; a filter without an action matches nothing. Exits 101 when a restart is needed (after installing, or with updates already pending), 0 when
    /// nothing is left to do.
    public static func windowsUpdate(searchCriteria: String?, filters: [String], updateLimit: Int?) -> String {
        let criteria = (searchCriteria?.isEmpty == false ? searchCriteria! : WindowsUpdateCustomizer.defaultSearchCriteria)
        let limit = max(1, updateLimit ?? WindowsUpdateCustomizer.defaultUpdateLimit)
        let filterLines = (filters.isEmpty ? ["include:$true"] : filters).map { filter -> String in
            // As rgl/packer-plugin-windows-update's windows-update.ps1: split at the first ':'; without one the whole
            // text is the action and the expression is empty, so the filter matches nothing.
            let parts = filter.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let action = parts[0].trimmingCharacters(in: .whitespaces).lowercased()
            let expression = parts.count == 2 ? String(parts[1]) : ""
            return "  @{ Action = \(PowerShell.quote(action)); Text = \(PowerShell.quote(expression)); Test = [ScriptBlock]::Create(\(PowerShell.quote(expression))) }"
        }
        return """
        $ErrorActionPreference = 'Stop'
        $ProgressPreference = 'SilentlyContinue'
        $searchCriteria = \(PowerShell.quote(criteria))
        $updateLimit = \(limit)
        $filters = @(
        \(filterLines.joined(separator: ",\n"))
        )
        function Exit-With($code) { Write-Output "Exiting with code $code"; exit $code }
        function Test-RebootPending {
          if ((New-Object -ComObject Microsoft.Update.SystemInfo).RebootRequired) { return $true }
          if (Test-Path 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending') { return $true }
          return $false
        }
        if (Test-RebootPending) { Write-Output 'A restart is pending before searching.'; Exit-With 101 }
        $session = New-Object -ComObject Microsoft.Update.Session
        $session.ClientApplicationID = 'kiln-windows-update'
        $searcher = $session.CreateUpdateSearcher()
        Write-Output "Searching for updates: $searchCriteria"
        for ($attempt = 1; ; $attempt++) {
          try { $search = $searcher.Search($searchCriteria); if ($search.ResultCode -eq 2) { break } ; throw "search result code $($search.ResultCode)" }
          catch { if ($attempt -ge 5) { throw } ; Write-Output "Search failed ($_); retrying in 5 s"; Start-Sleep -Seconds 5 }
        }
        $selected = New-Object -ComObject Microsoft.Update.UpdateColl
        $titles = @{}
        $limitReached = $false
        foreach ($update in $search.Updates) {
          $decision = $null
          foreach ($filter in $filters) {
            $_ = $update
            if (& $filter.Test) { $decision = $filter; break }
          }
          $kb = ($update.KBArticleIDs | ForEach-Object { "KB$_" }) -join ','
          $size = '{0:N1} MB' -f ($update.MaxDownloadSize / 1MB)
          if ($null -eq $decision -or $decision.Action -ne 'include') {
            $why = if ($null -eq $decision) { 'no filter matched' } else { "excluded by $($decision.Text)" }
            Write-Output "Skipping $($update.Title) [$kb] ($why)"
            continue
          }
          if ($titles.ContainsKey($update.Title)) { continue }
          if ($selected.Count -ge $updateLimit) { $limitReached = $true; Write-Output "Update limit $updateLimit reached; the rest waits for the next round"; break }
          if ($update.InstallationBehavior.CanRequestUserInput) { Write-Output "Warning: $($update.Title) may ask for user input" }
          if (-not $update.EulaAccepted) { $update.AcceptEula() }
          $titles[$update.Title] = $true
          $null = $selected.Add($update)
          Write-Output "Selected $($update.Title) [$kb] ($size)"
        }
        if ($selected.Count -eq 0) { Write-Output 'No updates to install.'; Exit-With 0 }
        $toDownload = New-Object -ComObject Microsoft.Update.UpdateColl
        foreach ($update in $selected) { if (-not $update.IsDownloaded) { $null = $toDownload.Add($update) } }
        if ($toDownload.Count -gt 0) {
          Write-Output "Downloading $($toDownload.Count) update(s)"
          $downloader = $session.CreateUpdateDownloader()
          $downloader.Priority = 4
          $downloader.Updates = $toDownload
          $download = $downloader.Download()
          Write-Output "Download result code $($download.ResultCode)"
        }
        $toInstall = New-Object -ComObject Microsoft.Update.UpdateColl
        foreach ($update in $selected) { if ($update.IsDownloaded) { $null = $toInstall.Add($update) } }
        if ($toInstall.Count -eq 0) { Write-Output 'Nothing was downloaded.'; Exit-With 1 }
        Write-Output "Installing $($toInstall.Count) update(s)"
        $installer = $session.CreateUpdateInstaller()
        $installer.Updates = $toInstall
        $install = $installer.Install()
        for ($i = 0; $i -lt $toInstall.Count; $i++) {
          $result = $install.GetUpdateResult($i)
          Write-Output "Installed $($toInstall.Item($i).Title): result code $($result.ResultCode), HRESULT $($result.HResult)"
        }
        if ($install.RebootRequired -or $limitReached -or (Test-RebootPending)) { Exit-With 101 }
        Exit-With 0
        """
    }

    /// The exit code that asks for a restart and another round (2147942501 is how Windows Server 2012 reports it).
    public static func updateNeedsRestart(_ code: Int32) -> Bool {
        code == 101 || UInt32(bitPattern: code) == 2_147_942_501
    }

    /// Runs the template's own deprovisioning script if it wrote one, else AIB's default Sysprep: wait for the
    /// Azure guest agent services if they exist, remove leftover answer files, generalize, and poll ImageState
    /// until the image is sealed.
    public static let deprovision = PowerShell.commandLine("""
    $ErrorActionPreference = 'Stop'
    if (Test-Path -LiteralPath 'C:\\DeprovisioningScript.ps1') {
      Write-Output '>>> Running C:\\DeprovisioningScript.ps1'
      & 'C:\\DeprovisioningScript.ps1'
      if ($null -ne $LASTEXITCODE) { exit $LASTEXITCODE } else { exit 0 }
    }
    foreach ($service in 'RdAgent', 'WindowsAzureTelemetryService', 'WindowsAzureGuestAgent') {
      if (Get-Service -Name $service -ErrorAction SilentlyContinue) {
        while ((Get-Service -Name $service).Status -ne 'Running') { Write-Output ">>> Waiting for $service"; Start-Sleep -Seconds 5 }
      }
    }
    foreach ($answer in "$env:SystemRoot\\System32\\Sysprep\\unattend.xml", "$env:SystemRoot\\Panther\\unattend.xml", "$env:SystemRoot\\Panther\\Unattend.xml") {
      if (Test-Path -LiteralPath $answer) { Remove-Item -LiteralPath $answer -Force }
    }
    & "$env:SystemRoot\\System32\\Sysprep\\Sysprep.exe" /oobe /generalize /quiet /quit
    while ($true) {
      $state = (Get-ItemProperty 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State').ImageState
      Write-Output $state
      if ($state -eq 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE') { break }
      Start-Sleep -Seconds 5
    }
    Write-Output '>>> Sysprep complete ...'
    """)

    /// First-logon script of a generalized image: WinRM over HTTPS on 5986 with a self-signed certificate,
    /// Basic and NTLM allowed, and the firewall opened for it.
    public static let enableWinRMHTTPS = """
    $ErrorActionPreference = 'Stop'
    $cert = New-SelfSignedCertificate -DnsName $env:COMPUTERNAME -CertStoreLocation 'Cert:\\LocalMachine\\My'
    Enable-PSRemoting -SkipNetworkProfileCheck -Force
    Get-ChildItem 'WSMan:\\localhost\\Listener' | Where-Object { $_.Keys -contains 'Transport=HTTPS' } | Remove-Item -Recurse -Force
    $null = New-Item -Path 'WSMan:\\localhost\\Listener' -Transport HTTPS -Address * -CertificateThumbPrint $cert.Thumbprint -Force
    Set-Item 'WSMan:\\localhost\\Service\\Auth\\Basic' -Value $true
    Set-Item 'WSMan:\\localhost\\MaxTimeoutms' -Value 1800000
    Set-Item 'WSMan:\\localhost\\Shell\\MaxMemoryPerShellMB' -Value 2048
    & netsh advfirewall firewall add rule name='Kiln WinRM HTTPS' dir=in action=allow protocol=TCP localport=5986
    """

    /// Where the offline writer puts `enableWinRMHTTPS` (FirstLogonCommands lines are limited to 1024 characters).
    public static let winRMSetupScriptPath = #"C:\Windows\Setup\Scripts\kiln-winrm.ps1"#
    /// The answer file's path inside the image; Windows setup reads it in the specialize and oobeSystem passes.
    public static let unattendPath = #"C:\Windows\Panther\unattend.xml"#

    /// The answer file for a generalized image's first boot: skip OOBE, set the per-build Administrator
    /// password (encoded as Windows setup expects, not in plain text), log on once, enable WinRM over HTTPS.
    public static func unattend(administratorPassword password: String, computerName: String = "*") -> String {
        // UnattendedXML password encoding: base64 of UTF-16LE(password + "AdministratorPassword") / ("Password").
        func encode(_ value: String, suffix: String) -> String {
            Data((value + suffix).utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }).base64EncodedString()
        }
        let escapedName = XMLText.escape(computerName)
        let command = XMLText.escape("powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File " + winRMSetupScriptPath)
        let component = #"processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#
        return """
        <?xml version="1.0" encoding="utf-8"?>
        <unattend xmlns="urn:schemas-microsoft-com:unattend">
          <settings pass="specialize">
            <component name="Microsoft-Windows-Shell-Setup" \(component)>
              <ComputerName>\(escapedName)</ComputerName>
            </component>
          </settings>
          <settings pass="oobeSystem">
            <component name="Microsoft-Windows-International-Core" \(component)>
              <InputLocale>en-US</InputLocale>
              <SystemLocale>en-US</SystemLocale>
              <UILanguage>en-US</UILanguage>
              <UserLocale>en-US</UserLocale>
            </component>
            <component name="Microsoft-Windows-Shell-Setup" \(component)>
              <OOBE>
                <HideEULAPage>true</HideEULAPage>
                <HideLocalAccountScreen>true</HideLocalAccountScreen>
                <HideOEMRegistrationScreen>true</HideOEMRegistrationScreen>
                <HideOnlineAccountScreens>true</HideOnlineAccountScreens>
                <HideWirelessSetupInOOBE>true</HideWirelessSetupInOOBE>
                <NetworkLocation>Work</NetworkLocation>
                <ProtectYourPC>3</ProtectYourPC>
                <SkipMachineOOBE>true</SkipMachineOOBE>
                <SkipUserOOBE>true</SkipUserOOBE>
              </OOBE>
              <UserAccounts>
                <AdministratorPassword>
                  <Value>\(encode(password, suffix: "AdministratorPassword"))</Value>
                  <PlainText>false</PlainText>
                </AdministratorPassword>
              </UserAccounts>
              <AutoLogon>
                <Enabled>true</Enabled>
                <LogonCount>1</LogonCount>
                <Username>Administrator</Username>
                <Password>
                  <Value>\(encode(password, suffix: "Password"))</Value>
                  <PlainText>false</PlainText>
                </Password>
              </AutoLogon>
              <FirstLogonCommands>
                <SynchronousCommand wcm:action="add">
                  <Order>1</Order>
                  <Description>Kiln: WinRM over HTTPS</Description>
                  <CommandLine>\(command)</CommandLine>
                </SynchronousCommand>
              </FirstLogonCommands>
            </component>
          </settings>
        </unattend>
        """
    }

    /// A password for the build's Administrator: 24 characters from all four classes Windows' complexity rule
    /// counts, no characters that need escaping anywhere.
    public static func generatePassword() -> String {
        let classes = [Array("ABCDEFGHJKLMNPQRSTUVWXYZ"), Array("abcdefghijkmnopqrstuvwxyz"), Array("23456789"), Array("-_.+=")]
        var characters = classes.map { $0.randomElement()! }
        let all = classes.flatMap { $0 }
        while characters.count < 24 { characters.append(all.randomElement()!) }
        return String(characters.shuffled())
    }
}
