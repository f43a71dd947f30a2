// The /uploader page: Uppy's Dashboard sends audio files to the service's tus endpoint
// with the bearer token from the form, then asks GET /upload/<id> for the stored object.
//
// The upload's id is the last path segment of its tus URL (the tus upload *is* an upload
// session). The token comes from the form, or once from the address's fragment
// (`/uploader#token=...`, what ./scripts/dev prints): a fragment is never sent to a server,
// and it is removed from the address bar at once so it is not left in history.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './style.css'

const config = JSON.parse(document.getElementById('uploader-config').textContent)
const tokenInput = document.getElementById('token')
const fileIdInput = document.getElementById('file-id')
const notice = document.getElementById('notice')
const results = document.getElementById('results')
document.querySelector('form.settings').addEventListener('submit', (event) => event.preventDefault())

const fragment = new URLSearchParams(window.location.hash.slice(1))
if (fragment.has('token')) tokenInput.value = fragment.get('token')
if (fragment.has('file_id')) fileIdInput.value = fragment.get('file_id')
if (window.location.hash) {
  window.history.replaceState(null, '', window.location.pathname + window.location.search)
}

const token = () => tokenInput.value.trim()
const authHeaders = () => ({ Authorization: `Bearer ${token()}` })

function say(message) {
  notice.textContent = message
}

const uppy = new Uppy({
  id: 'audio-uploader',
  autoProceed: false,
  restrictions: {
    maxFileSize: config.max_file_size,
    allowedFileTypes: config.allowed_extensions.map((ext) => `.${ext}`),
  },
  onBeforeUpload(files) {
    const fileId = Number(fileIdInput.value)
    if (!token()) {
      say('Paste a token first.')
      return false
    }
    if (!Number.isInteger(fileId) || fileId <= 0) {
      say('main_service_file_id must be a positive whole number.')
      return false
    }
    say('')
    const ready = {}
    for (const [id, file] of Object.entries(files)) {
      ready[id] = {
        ...file,
        meta: {
          ...file.meta,
          filename: file.name,
          filetype: file.type || 'application/octet-stream',
          main_service_file_id: String(fileId),
        },
      }
    }
    return ready
  },
})

uppy.use(Dashboard, {
  inline: true,
  target: '#dashboard',
  width: '100%',
  height: 420,
  showProgressDetails: true,
  proudlyDisplayPoweredByUppy: false,
  note: `Audio files (${config.allowed_extensions.join(', ')})`,
})

uppy.use(Tus, {
  endpoint: new URL(config.tus_endpoint, window.location.href).href,
  // Called when each upload starts, so a token pasted after adding files is used.
  headers: () => authHeaders(),
  allowedMetaFields: ['filename', 'filetype', 'main_service_file_id'],
  // One PATCH for the whole file (tus-js-client's default); the service streams it.
  retryDelays: [0, 1000, 3000, 5000, 10000],
  limit: 3,
})

function showResult(file, uploadId, state, detail) {
  let item = results.querySelector(`li[data-upload-id="${CSS.escape(uploadId)}"]`)
  if (!item) {
    item = document.createElement('li')
    item.dataset.uploadId = uploadId
    results.append(item)
  }
  item.dataset.state = state
  item.replaceChildren()
  const name = document.createElement('strong')
  name.textContent = file.name
  item.append(name, ' ')
  if (state === 'completed') {
    const link = document.createElement('a')
    link.className = 'object-url'
    link.href = detail.file_path_on_upload_service
    link.textContent = detail.file_path_on_upload_service
    const sha = document.createElement('code')
    sha.className = 'sha256'
    sha.textContent = detail.sha256
    item.append(link, ' sha256 ', sha)
  } else {
    item.append(detail)
  }
}

async function fetchStatus(uploadId) {
  const response = await fetch(`${config.status_path}${encodeURIComponent(uploadId)}`, {
    headers: authHeaders(),
  })
  const body = await response.json()
  if (!response.ok) throw new Error(body.message || `status ${response.status}`)
  return body.data
}

uppy.on('upload-success', async (file, response) => {
  const uploadId = new URL(response.uploadURL).pathname.split('/').filter(Boolean).pop()
  showResult(file, uploadId, 'pending', 'stored; looking up its URL…')
  try {
    // The final PATCH answers only once the object is stored, so one look-up is enough;
    // a few more cover a status read that races the completion's commit.
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const status = await fetchStatus(uploadId)
      if (status.state === 'completed' && status.result) {
        showResult(file, uploadId, 'completed', status.result)
        return
      }
      await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)))
    }
    showResult(file, uploadId, 'failed', 'uploaded, but the service has not completed it')
  } catch (error) {
    showResult(file, uploadId, 'failed', `uploaded, but its status is unknown: ${error.message}`)
  }
})

// The service's refusals (a 415 for a file that is not audio, a 401 for a bad token...)
// come in its error envelope: show its sentence and code rather than tus-js-client's
// whole request description.
function describeError(error, response) {
  const xhr = response?.body?.xhr
  try {
    const envelope = JSON.parse(xhr?.responseText ?? '')
    if (envelope?.status === 'error') {
      return `${envelope.message} (${envelope.error?.code}, HTTP ${response.status})`
    }
  } catch {
    // not an envelope: fall through to the client's own message
  }
  return error.message
}

uppy.on('upload-error', (file, error, response) => {
  say(`${file?.name ?? 'A file'} was not uploaded: ${describeError(error, response)}`)
})

// For tests and the curious: the Uppy instance behind the page.
window.uppy = uppy
document.body.dataset.ready = 'true'
