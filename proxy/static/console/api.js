// The admin API, and the session: the token the operator pasted and the name the audit list
// records, both in sessionStorage (gone with the tab). No cookies: the API never reads any.

const TOKEN = "cutover.token";
const NAME = "cutover.operator";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN) || "";
  },
  get operator() {
    return sessionStorage.getItem(NAME) || "";
  },
  get active() {
    return sessionStorage.getItem(TOKEN) !== null;
  },
  start(token, operator) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(NAME, operator);
  },
  end() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(NAME);
  },
};

/** Who the audit list will name: the operator's name, marked as coming from the console. */
export function by() {
  return session.operator ? `${session.operator} (console)` : "console";
}

let onUnauthorized = () => {};

export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

export async function api(method, path, body, { token = session.token, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify({ by: by(), ...(body || {}) });
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { detail: `the admin API cannot be reached (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!response.ok) {
    if (response.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(response.status, data);
  }
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) search.append(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
